// manman web console: plain JavaScript, no build step, no external resources.
//
// The admin token lives in sessionStorage (this tab only) and travels in an Authorization
// header; a console websocket gets a short-lived console token of its own, fetched from
// GET /server/{id}/log. Console text is untrusted: it only ever reaches the DOM as textContent.
"use strict";

(() => {
  const TOKEN_KEY = "manman.admin_token";
  const MAX_LINES = 2000;          // console lines kept in the DOM
  const TAIL_LINES = 200;          // history shown when a console opens
  const REFRESH_MS = 2000;         // worker and server lists
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const PING_MS = 25000;
  const STATES = new Set(["running", "starting", "stopping", "stopped", "crashed", "failed",
    "installing", "created", "unknown"]);
  const WORKER_STATES = new Set(["alive", "frozen", "shutdown", "unknown"]);
  const STREAMS = new Set(["stdout", "stderr", "install", "manman"]);

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  let token = sessionStorage.getItem(TOKEN_KEY);
  let refreshGen = 0;
  let refreshTimer = null;
  let servers = new Map();   // id -> server as GET /server returns it
  let workers = new Map();   // id -> worker
  let listLoaded = false;
  let selectedId = null;     // id (or name, until the list resolves it) of the open server
  let term = null;           // the open server's Console
  let actionTimer = null;

  // -- the API -------------------------------------------------------------------------------

  class AuthError extends Error {}

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const used = token;
    if (!used) throw new AuthError("not signed in");
    const init = {
      method,
      cache: "no-store",
      credentials: "omit",
      headers: { Authorization: "Bearer " + used, Accept: "application/json" },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "unreachable", "the host is unreachable (" + e.message + ")");
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    const err = (data && typeof data.error === "object" && data.error) || {};
    if (resp.status === 401) {
      const msg = err.message || "the token was refused";
      if (token === used) signOut("Signed out: " + msg, true);
      throw new AuthError(msg);
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, err.code || "http_" + resp.status,
        err.message || "HTTP " + resp.status);
    }
    return data;
  }

  // -- small helpers -------------------------------------------------------------------------

  function show(el, visible) { el.hidden = !visible; }

  function setMessage(el, text, kind) {
    el.textContent = text || "";
    el.classList.toggle("error", kind === "error");
    el.classList.toggle("ok", kind === "ok");
    show(el, Boolean(text));
  }

  function stateClass(state) { return STATES.has(state) ? state : "unknown"; }

  function setBadge(el, state, known) {
    const s = String(state || "unknown");
    el.textContent = s;
    el.dataset.state = s;
    el.className = "badge state-" + ((known || STATES).has(s) ? s : "unknown");
  }

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  function clock(ts) {
    const d = new Date(ts * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3);
  }

  function day(ts) {
    const d = new Date(ts * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const d = Math.floor(seconds / 86400);
    const h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60);
    const s = seconds % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function cell(tr, i) {
    while (tr.cells.length <= i) tr.insertCell();
    return tr.cells[i];
  }

  // -- sign in / out -------------------------------------------------------------------------

  function showLogin(message, isError) {
    show($("main-view"), false);
    show($("login-view"), true);
    setMessage($("login-message"), message, isError ? "error" : "ok");
    $("login-token").value = "";
    $("login-token").focus();
    document.title = "manman — sign in";
  }

  function signOut(message, isError) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    refreshGen++;
    clearTimeout(refreshTimer);
    closeConsole();
    closeAdmin();
    servers = new Map();
    workers = new Map();
    listLoaded = false;
    selectedId = null;
    show($("server-view"), false);
    show($("new-server-view"), false);
    show($("no-selection"), true);
    $("workers").tBodies[0].replaceChildren();
    $("servers").tBodies[0].replaceChildren();
    showLogin(message, isError);
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const candidate = $("login-token").value.trim();
    if (!candidate) return;
    const button = $("login-button");
    button.disabled = true;
    setMessage($("login-message"), "");
    token = candidate;
    try {
      await api("GET", "/worker");   // proves the token before keeping it
      sessionStorage.setItem(TOKEN_KEY, candidate);
      showMain();
    } catch (e) {
      if (e instanceof AuthError) {
        showLogin("That token was refused (" + e.message + ").", true);
      } else {
        token = null;
        const msg = e.status === 403 ? "This token is not an admin token." : e.message;
        showLogin(msg, true);
      }
    } finally {
      button.disabled = false;
    }
  }

  function showMain() {
    show($("login-view"), false);
    show($("main-view"), true);
    $("login-token").value = "";
    refreshGen++;
    refresh(refreshGen);
    route();
  }

  // -- worker and server lists ---------------------------------------------------------------

  async function refresh(gen) {
    clearTimeout(refreshTimer);
    try {
      const [w, s] = await Promise.all([api("GET", "/worker"), api("GET", "/server")]);
      if (gen !== refreshGen) return;
      workers = new Map((w.workers || []).map((x) => [x.id, x]));
      servers = new Map((s.servers || []).map((x) => [x.id, x]));
      listLoaded = true;
      renderWorkers();
      renderServers();
      renderServerView();
      if (adminView) adminServers();
      setMessage($("list-message"), "");
      $("refresh-status").textContent = "updated " + clock(Date.now() / 1000).slice(0, 8);
    } catch (e) {
      if (e instanceof AuthError || gen !== refreshGen) return;
      setMessage($("list-message"), e.message, "error");
      $("refresh-status").textContent = "host unreachable — retrying";
    }
    if (gen === refreshGen) refreshTimer = setTimeout(() => refresh(gen), REFRESH_MS);
  }

  function renderWorkers() {
    const body = $("workers").tBodies[0];
    const rows = new Map([...body.rows].map((tr) => [tr.dataset.workerId, tr]));
    const list = [...workers.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const w of list) {
      let tr = rows.get(w.id);
      rows.delete(w.id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.workerId = w.id;
      }
      tr.dataset.workerName = w.name;
      cell(tr, 0).textContent = w.name;
      cell(tr, 0).title = w.address ? w.name + " — " + w.address : w.name;
      let badge = cell(tr, 1).firstElementChild;
      if (!badge) badge = cell(tr, 1).appendChild(document.createElement("span"));
      setBadge(badge, w.status, WORKER_STATES);
      cell(tr, 2).textContent = String(w.servers);
      cell(tr, 2).className = "num";
      body.appendChild(tr);
    }
    for (const tr of rows.values()) tr.remove();
    $("worker-count").textContent = String(list.length);
    show($("workers-empty"), list.length === 0);
  }

  function renderServers() {
    const body = $("servers").tBodies[0];
    const rows = new Map([...body.rows].map((tr) => [tr.dataset.serverId, tr]));
    const list = [...servers.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const s of list) {
      let tr = rows.get(s.id);
      rows.delete(s.id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.serverId = s.id;
        tr.tabIndex = 0;
      }
      tr.dataset.serverName = s.name;
      tr.dataset.state = s.state;
      tr.classList.toggle("selected", s.id === selectedId);
      cell(tr, 0).textContent = s.name;
      cell(tr, 0).title = s.game_id;
      const c = cell(tr, 1);
      let badge = c.firstElementChild;
      if (!badge) badge = c.appendChild(document.createElement("span"));
      setBadge(badge, s.state);
      badge.title = s.error || (s.state === "installing" && s.install_progress != null
        ? "install " + Math.round(s.install_progress) + "%" : "");
      let flag = badge.nextElementSibling;
      if (!flag) {
        flag = c.appendChild(document.createElement("span"));
        flag.className = "update-flag";
        flag.textContent = "update";
      }
      show(flag, !!s.update_available);
      flag.title = s.update_available ? "update available: build " + s.latest_build : "";
      const w = workers.get(s.worker_id);
      cell(tr, 2).textContent = w ? w.name : (s.worker_id || "—");
      const p = cell(tr, 3);
      p.className = "num players";
      p.textContent = players(s.query);
      p.title = queryTitle(s.query);
      body.appendChild(tr);
    }
    for (const tr of rows.values()) tr.remove();
    $("server-count").textContent = String(list.length);
    show($("servers-empty"), list.length === 0);
  }

  // "3/24", "3" when the game hides its slots, "—" when unknown (no query, or none yet)
  function players(q) {
    if (!q || q.players == null) return "—";
    return q.max_players == null ? String(q.players) : q.players + "/" + q.max_players;
  }

  function queryTitle(q) {
    if (!q) return "";
    if (!q.ok) return "query failing: " + (q.error || "no answer");
    return [q.map, q.version, q.latency_ms != null ? q.latency_ms.toFixed(1) + " ms" : null]
      .filter((x) => x).join(" · ");
  }

  function findServer(key) {
    if (!key) return null;
    if (servers.has(key)) return servers.get(key);
    for (const s of servers.values()) if (s.name === key) return s;
    return null;
  }

  // -- one server's view ---------------------------------------------------------------------

  function route() {
    if (!token) return;
    if (location.hash === "#/new") {
      openNewServer();
      return;
    }
    if (location.hash === "#/webhooks" || location.hash === "#/audit") {
      openAdmin(location.hash.slice(2));
      return;
    }
    const m = /^#\/server\/([^/]+)$/.exec(location.hash);
    const key = m ? decodeURIComponent(m[1]) : null;
    if (key === selectedId && $("new-server-view").hidden && adminView === null) return;
    openServer(key);
  }

  function openServer(key) {
    closeAdmin();
    closeConsole();
    show($("new-server-view"), false);
    selectedId = key;
    setMessage($("action-message"), "");
    $("command-input").value = "";
    if (!key) {
      show($("server-view"), false);
      show($("no-selection"), true);
      renderServers();
      return;
    }
    const s = findServer(key);
    if (s) selectedId = s.id;
    resetFiles();
    resetSchedules();
    resetBackups();
    resetStats();
    show($("no-selection"), false);
    show($("server-view"), true);
    term = new Console(selectedId);
    term.connect();
    renderServers();
    renderServerView();
  }

  function closeConsole() {
    if (term) term.close();
    term = null;
  }

  function renderServerView() {
    if (!selectedId) return;
    let s = findServer(selectedId);
    if (s && s.id !== selectedId) {   // opened by name: now we know its id
      selectedId = s.id;
    }
    if (!s) {
      if (listLoaded) {
        $("server-name").textContent = selectedId;
        setBadge($("server-state"), "unknown");
        setMessage($("server-error"), "No such server (deleted?).", "error");
      }
      return;
    }
    // the console's state frames are fresher than the list while its websocket is live
    const live = term && term.live && term.liveState ? term.liveState : null;
    const state = live ? live.state : s.state;
    const pid = live ? live.pid : s.pid;
    const restarts = live && live.restarts != null ? live.restarts : s.restarts;
    const progress = live ? live.install_progress : s.install_progress;
    $("server-name").textContent = s.name;
    setBadge($("server-state"), state);
    const w = workers.get(s.worker_id);
    $("detail-game").textContent = s.game_id;
    $("detail-worker").textContent = w ? w.name + " (" + w.status + ")" : (s.worker_id || "—");
    $("detail-pid").textContent = pid == null ? "—" : String(pid);
    $("detail-uptime").textContent = (state === "running" || state === "starting") &&
      s.started_at ? duration(Date.now() / 1000 - s.started_at) : "—";
    $("detail-restarts").textContent = String(restarts ?? 0);
    $("detail-players").textContent = players(s.query);
    $("detail-players").title = queryTitle(s.query);
    show($("detail-progress-row"), state === "installing");
    $("detail-progress").textContent = progress == null ? "…" : Math.round(progress) + "%";
    show($("detail-build-row"), s.installed_build != null || s.latest_build != null);
    $("detail-build").textContent = (s.installed_build || "—") + (s.update_available
      ? " — update available: build " + s.latest_build : "");
    $("detail-build").classList.toggle("update-available", !!s.update_available);
    const limits = limitsText(s.limits);
    show($("detail-limits-row"), limits !== "");
    $("detail-limits").textContent = limits;
    // over limits.disk_mb: said even while it still runs (it is not started again)
    const disk = s.disk_full ? "over its disk limit: the files use " +
      Math.round(s.disk_full.used / 1048576) + " MiB of " +
      Math.round(s.disk_full.limit / 1048576) + " MiB; delete files to start it again" : "";
    setMessage($("server-error"), state === "failed" || s.error || disk
      ? s.error || disk : "", "error");
    document.title = "manman — " + s.name + " (" + state + ")";
    renderStatsNow();
  }

  // "memory 512 MiB, cpus 1.5, pids 200": the limits the spec sets (docs/spec.md "Limits")
  function limitsText(limits) {
    if (!limits) return "";
    const parts = [];
    if (limits.memory_mb != null) parts.push("memory " + limits.memory_mb + " MiB");
    if (limits.cpus != null) parts.push("cpus " + limits.cpus);
    if (limits.pids != null) parts.push("pids " + limits.pids);
    if (limits.disk_mb != null) parts.push("disk " + limits.disk_mb + " MiB");
    return parts.join(", ");
  }

  async function onAction(ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button || !selectedId) return;
    const action = button.dataset.action;
    const id = selectedId;
    const buttons = document.querySelectorAll(".actions button");
    buttons.forEach((b) => { b.disabled = true; });
    clearTimeout(actionTimer);
    setMessage($("action-message"), action + "…");
    try {
      const r = await api("POST", "/server/" + enc(id) + "/command", { type: action });
      if (id !== selectedId) return;
      setMessage($("action-message"), r && r.delivered === false
        ? action + " queued: the worker is unreachable; it applies when the worker is back"
        : action + " sent", "ok");
      actionTimer = setTimeout(() => setMessage($("action-message"), ""), 5000);
      refresh(refreshGen);
    } catch (e) {
      if (e instanceof AuthError || id !== selectedId) return;
      setMessage($("action-message"), e.message, "error");
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // -- a new server from a preset: the form is built from the preset's variables ------------

  let presets = new Map();   // name -> summary (GET /preset)

  function openNewServer() {
    closeAdmin();
    closeConsole();
    selectedId = null;
    show($("server-view"), false);
    show($("no-selection"), false);
    show($("new-server-view"), true);
    setMessage($("new-message"), "");
    renderServers();
    const workerSelect = $("new-worker");
    workerSelect.replaceChildren(...[...workers.values()]
      .filter((w) => w.status !== "shutdown")
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((w) => new Option(w.name + " (" + w.status + ")", w.id)));
    api("GET", "/preset").then((r) => {
      presets = new Map((r.presets || []).map((p) => [p.name, p]));
      const select = $("new-preset");
      const chosen = select.value;
      select.replaceChildren(...[...presets.values()].map(
        (p) => new Option(p.title + " (" + p.name + ")", p.name)));
      if (presets.has(chosen)) select.value = chosen;
      renderPresetFields();
    }).catch((e) => {
      if (!(e instanceof AuthError)) setMessage($("new-message"), e.message, "error");
    });
  }

  function field(parent, id, labelText, required, description) {
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = labelText;
    if (required) {
      const star = document.createElement("span");
      star.className = "req";
      star.title = "required";
      star.textContent = " *";
      label.appendChild(star);
    }
    parent.appendChild(label);
    const input = document.createElement("input");
    input.id = id;
    input.required = Boolean(required);
    input.spellcheck = false;
    parent.appendChild(input);
    if (description) {
      const p = document.createElement("p");
      p.className = "desc muted small";
      p.id = id + "-desc";
      p.textContent = description;
      input.setAttribute("aria-describedby", p.id);
      parent.appendChild(p);
    }
    return input;
  }

  function renderPresetFields() {
    const p = presets.get($("new-preset").value);
    const vars = $("new-vars");
    const ports = $("new-ports");
    vars.replaceChildren(vars.querySelector("legend"));
    ports.replaceChildren(ports.querySelector("legend"));
    $("new-preset-info").textContent = p ? p.game_id + " · preset version " + p.version : "";
    if (!p) return;
    for (const v of p.variables) {
      const id = "var-" + v.name;
      const described = [v.description, v.rule ? "(" + v.rule + ")" : ""].filter(Boolean);
      const input = field(vars, id, v.name, v.required, described.join(" "));
      input.dataset.var = v.name;
      input.dataset.type = v.type;
      if (v.type === "bool") {
        input.type = "checkbox";
        input.required = false;
        input.checked = v.default === true;
      } else if (v.type === "int") {
        input.type = "number";
        input.step = "1";
        const range = /^(-?\d+)\.\.(-?\d+)$/.exec(v.rule || "");
        if (range) { input.min = range[1]; input.max = range[2]; }
        if (v.default != null) input.value = String(v.default);
      } else if (v.type === "secret") {
        input.type = "password";
        input.autocomplete = "new-password";
      } else {
        input.type = "text";
        if (v.default != null) input.value = String(v.default);
      }
    }
    show(vars, p.variables.length > 0);
    for (const port of p.ports) {
      if (port.follows) continue;   // the game derives it
      const input = field(ports, "port-" + port.name, port.name + " (" + port.protocol + ")",
        false, port.description || "a number, or auto for the worker to pick one");
      input.type = "text";
      input.dataset.port = port.name;
      input.value = String(port.default);
    }
    show(ports, ports.querySelectorAll("input").length > 0);
  }

  async function onCreate(ev) {
    ev.preventDefault();
    const body = { name: $("new-name").value.trim(), preset: $("new-preset").value, vars: {} };
    if ($("new-worker").value) body.worker_id = $("new-worker").value;
    for (const input of $("new-vars").querySelectorAll("input[data-var]")) {
      const type = input.dataset.type;
      if (type === "bool") body.vars[input.dataset.var] = input.checked;
      else if (input.value === "") continue;   // its default
      else if (type === "int") body.vars[input.dataset.var] = Number(input.value);
      else body.vars[input.dataset.var] = input.value;
    }
    const ports = {};
    for (const input of $("new-ports").querySelectorAll("input[data-port]")) {
      const value = input.value.trim();
      if (value) ports[input.dataset.port] = value === "auto" ? "auto" : Number(value);
    }
    if (Object.keys(ports).length) body.ports = ports;
    const limits = {};
    for (const [id, field] of [["new-memory-mb", "memory_mb"], ["new-cpus", "cpus"],
                               ["new-pids", "pids"]]) {
      const value = $(id).value.trim();
      if (value) limits[field] = Number(value);
    }
    if (Object.keys(limits).length) body.limits = limits;
    if ($("new-start").checked) body.desired_state = "running";
    const button = $("new-submit");
    button.disabled = true;
    setMessage($("new-message"), "creating…");
    try {
      const s = await api("POST", "/server", body);
      // a secret typed here is not kept in the page
      for (const input of $("new-vars").querySelectorAll("input[type=password]")) {
        input.value = "";
      }
      setMessage($("new-message"), "");
      await refresh(refreshGen);
      location.hash = "#/server/" + enc(s.id);
    } catch (e) {
      if (!(e instanceof AuthError)) setMessage($("new-message"), e.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  // -- the console ---------------------------------------------------------------------------

  const history = [];
  let historyPos = 0;

  async function onCommand(ev) {
    ev.preventDefault();
    const input = $("command-input");
    const data = input.value;
    if (!data.trim() || !term) return;
    if (history[history.length - 1] !== data) history.push(data);
    if (history.length > 100) history.shift();
    historyPos = history.length;
    input.value = "";
    const id = term.serverId;
    if (term.send({ type: "command", data })) {
      term.echo(data);
      return;
    }
    // no live websocket: the API delivers it (or says why not)
    try {
      await api("POST", "/server/" + enc(id) + "/command", { type: "command", data });
      if (term && term.serverId === id) term.echo(data);
    } catch (e) {
      if (!(e instanceof AuthError) && id === selectedId) {
        setMessage($("action-message"), e.message, "error");
      }
    }
  }

  function onCommandKey(ev) {
    const input = ev.target;
    if (ev.key === "ArrowUp" && historyPos > 0) {
      historyPos--;
      input.value = history[historyPos];
      ev.preventDefault();
    } else if (ev.key === "ArrowDown" && historyPos < history.length) {
      historyPos++;
      input.value = history[historyPos] || "";
      ev.preventDefault();
    }
  }

  function renderLine(item) {
    const div = document.createElement("div");
    if (item.marker) {
      div.className = "line marker " + item.marker;
      div.textContent = item.text;
      return div;
    }
    if (item.local) {   // a command typed here: not a console line, no seq
      div.className = "line s-input";
    } else {
      const stream = STREAMS.has(item.stream) ? item.stream : "stdout";
      div.className = "line s-" + stream;
      div.dataset.seq = String(item.seq);
      div.dataset.stream = stream;
    }
    const ts = document.createElement("span");
    ts.className = "ts";
    ts.textContent = typeof item.ts === "number" ? clock(item.ts) : "";
    const tx = document.createElement("span");
    tx.className = "tx";
    tx.textContent = String(item.text);
    div.append(ts, tx);
    return div;
  }

  class Console {
    constructor(serverId) {
      this.serverId = serverId;
      this.el = $("console");
      this.el.replaceChildren();
      this.lastSeq = null;       // last line shown: reconnects resume at lastSeq + 1
      this.pending = [];         // lines waiting for the next frame
      this.flushScheduled = false;
      this.flushTimer = null;
      this.follow = true;        // auto-scroll: only while the user is at the bottom
      this.gen = 0;
      this.ws = null;
      this.live = false;
      this.liveState = null;
      this.closed = false;
      this.backoff = BACKOFF_FIRST_MS;
      this.retryTimer = null;
      this.pingTimer = null;
      this.openedAt = 0;
      this.expired = false;
      this.hellos = 0;           // hello frames seen: every one after the first is a reconnect
      this.onScroll = () => {
        const el = this.el;
        this.follow = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
        show($("console-follow"), !this.follow);
      };
      this.el.addEventListener("scroll", this.onScroll, { passive: true });
      show($("console-follow"), false);
      $("console-count").textContent = "";
      this.status("closed", "connecting…");
    }

    status(kind, text) {
      const el = $("console-status");
      el.dataset.conn = kind;
      el.textContent = text;
    }

    async connect() {
      if (this.closed) return;
      const gen = ++this.gen;
      this.status("connecting", "connecting…");
      let consoleToken;
      try {
        const page = await api("GET", "/server/" + enc(this.serverId) + "/log?limit=1");
        consoleToken = page && page.token;
        if (!consoleToken) throw new ApiError(0, "no_token", "the host gave no console token");
      } catch (e) {
        if (e instanceof AuthError || this.closed || gen !== this.gen) return;
        if (e instanceof ApiError && e.status === 404) {   // deleted: nothing to wait for
          this.status("closed", "server deleted");
          return;
        }
        this.retry(gen, e.message);
        return;
      }
      if (this.closed || gen !== this.gen) return;
      const q = new URLSearchParams();
      if (this.lastSeq === null) q.set("tail", String(TAIL_LINES));
      else q.set("since", String(this.lastSeq + 1));
      q.set("stats", "1");            // the live stats frames too, for the graphs
      q.set("token", consoleToken);   // the short-lived console token, never the admin token
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const url = proto + "//" + location.host + "/server/" + enc(this.serverId) +
        "/log/ws?" + q.toString();
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (e) {
        this.retry(gen, e.message);
        return;
      }
      this.ws = ws;
      this.expired = false;
      ws.onopen = () => {
        if (gen !== this.gen) return;
        this.openedAt = Date.now();
        this.pingTimer = setInterval(() => this.send({ type: "ping" }), PING_MS);
      };
      ws.onmessage = (ev) => { if (gen === this.gen) this.onFrame(ev.data); };
      ws.onclose = () => {
        if (gen !== this.gen) return;
        clearInterval(this.pingTimer);
        this.ws = null;
        const wasLive = this.live;
        this.live = false;
        if (wasLive) renderServerView();
        if (this.openedAt && Date.now() - this.openedAt > 5000) this.backoff = BACKOFF_FIRST_MS;
        this.openedAt = 0;
        if (!this.closed) this.retry(gen, "disconnected");
      };
    }

    retry(gen, why) {
      if (this.closed || gen !== this.gen) return;
      // an expired console token: a fresh one now, with no wait
      const delay = this.expired ? 0 : this.backoff + Math.floor(Math.random() * 250);
      if (!this.expired) this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      this.status("retry", why + " — reconnecting in " + (delay / 1000).toFixed(1) + " s");
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => { if (gen === this.gen) this.connect(); }, delay);
    }

    send(frame) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(frame));
      return true;
    }

    onFrame(data) {
      let f;
      try { f = JSON.parse(data); } catch (e) { return; }
      if (!f || typeof f !== "object") return;
      switch (f.type) {
        case "hello":
          if (typeof f.next_seq === "number") {
            if (this.lastSeq === null) {
              // where this view starts: a reconnect goes on from here even before any line
              this.lastSeq = Math.max(f.first_seq || 0, f.next_seq - TAIL_LINES) - 1;
            } else if (f.next_seq <= this.lastSeq) {
              // the worker lost numbers it gave out (a failed disk): follow its numbering
              this.push({ marker: "info", text: "console numbering restarted at " + f.next_seq });
              this.lastSeq = f.next_seq - 1;
            }
          }
          // a reconnect: the history fills the minutes the live tail missed meanwhile
          if (this.hellos++ > 0) {
            const last = series.lastLive();
            loadStats(last ? last.at : 0);
          }
          this.live = true;
          this.status("open", "live");
          if (typeof f.state === "string") this.liveState = { state: f.state };
          renderServerView();
          break;
        case "lines":
          for (const line of f.lines || []) {
            if (this.lastSeq !== null && line.seq <= this.lastSeq) continue;   // no duplicates
            this.push(line);
            this.lastSeq = line.seq;
          }
          break;
        case "gap": {
          if (this.lastSeq !== null && f.to_seq <= this.lastSeq) break;
          const n = f.to_seq - f.from_seq + 1;
          this.push({ marker: "gap", text: "… " + n + " line" + (n === 1 ? "" : "s") +
            " skipped (" + f.reason + ") …" });
          this.lastSeq = f.to_seq;
          break;
        }
        case "state":
          this.liveState = f;
          renderServerView();
          renderServers();
          break;
        case "stats":
          addStats(f);
          break;
        case "error":
          if (f.code === "token_expired") {   // routine: reconnect at once with a fresh one
            this.expired = true;
            this.push({ marker: "info", text: "console token expired — reconnecting" });
          } else {
            this.push({ marker: "error", text: "error " + f.code + ": " + f.message });
          }
          break;
        default:   // pong, or a frame type this page does not know
          break;
      }
    }

    echo(data) { this.push({ local: true, ts: Date.now() / 1000, text: data }); }

    push(item) {
      const p = this.pending;
      p.push(item);
      // a hidden tab gets no animation frames: never hold more than the DOM would keep
      if (p.length > 2 * MAX_LINES) p.splice(0, p.length - MAX_LINES);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        requestAnimationFrame(() => this.flush());
        this.flushTimer = setTimeout(() => this.flush(), 250);
      }
    }

    flush() {
      if (!this.flushScheduled) return;
      this.flushScheduled = false;
      clearTimeout(this.flushTimer);
      const items = this.pending;
      this.pending = [];
      if (this.closed || !items.length) return;
      const el = this.el;
      const start = Math.max(0, items.length - MAX_LINES);
      const frag = document.createDocumentFragment();
      for (let i = start; i < items.length; i++) frag.appendChild(renderLine(items[i]));
      if (items.length - start >= MAX_LINES) {
        el.replaceChildren(frag);
      } else {
        el.appendChild(frag);
        const excess = el.childElementCount - MAX_LINES;
        if (excess > 0) {
          const range = document.createRange();
          range.setStartBefore(el.firstChild);
          range.setEndAfter(el.children[excess - 1]);
          range.deleteContents();
        }
      }
      if (this.follow) el.scrollTop = el.scrollHeight;
      $("console-count").textContent = el.childElementCount + " lines" +
        (this.lastSeq !== null ? " · seq " + this.lastSeq : "");
    }

    clear() {
      this.pending = [];
      this.el.replaceChildren();
      $("console-count").textContent = "";
    }

    close() {
      this.closed = true;
      this.gen++;
      this.live = false;
      clearTimeout(this.retryTimer);
      clearTimeout(this.flushTimer);
      clearInterval(this.pingTimer);
      this.el.removeEventListener("scroll", this.onScroll);
      if (this.ws) {
        try { this.ws.close(1000); } catch (e) { /* already closing */ }
      }
      this.ws = null;
      this.status("closed", "disconnected");
    }
  }

  // -- live stats graphs ---------------------------------------------------------------------
  // CPU and memory of the open server as hand-drawn SVG (graphs.js: the data and the paths):
  // its minute history (GET /server/{id}/stats) when the view opens, then the console
  // websocket's stats frames as a finer live tail.

  const stats = window.manmanStats;
  const GRAPH_W = 600;             // the SVGs' viewBox; they stretch to their box
  const GRAPH_H = 100;
  const GAP_S = 150;               // samples further apart are not joined (not running then)
  const SAMPLED = new Set(["running", "starting", "stopping"]);
  const GRAPHS = [
    { key: "cpu", title: "CPU", value: (p) => p.cpu, text: stats.cpuText,
      scale: stats.cpuScale },
    { key: "memory", title: "Memory", value: (p) => p.memory, text: stats.bytesText,
      scale: stats.memoryScale },
  ];

  let series = new stats.Series();
  let statsGen = 0;                // a history answer for a view no longer open is dropped

  function hhmm(ts) {
    const d = new Date(ts * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  function resetStats() {
    statsGen++;
    series = new stats.Series();
    drawStats();
    if (selectedId) loadStats(0);
  }

  // the history from `since` (0: all of it): minute points, also where the live tail missed
  async function loadStats(since) {
    const gen = statsGen;
    let r;
    try {
      r = await api("GET", "/server/" + enc(selectedId) + "/stats?since=" + Math.floor(since));
    } catch (e) {
      return;   // the graphs stay as they are; the console's next reconnect asks again
    }
    if (gen !== statsGen || !r || !Array.isArray(r.points)) return;
    series.addHistory(r.points);
    drawStats();
  }

  // a stats frame from the console websocket
  function addStats(f) {
    if (series.addLive(f)) drawStats();
  }

  function drawStats() {
    const pts = series.points();
    const t0 = pts.length ? pts[0].at : 0;
    const t1 = pts.length ? Math.max(pts[pts.length - 1].at, t0 + 60) : 60;
    const box = { w: GRAPH_W, h: GRAPH_H, t0, t1, gap: series.gap(GAP_S) };
    for (const g of GRAPHS) {
      const svg = $(g.key + "-svg");
      const peak = pts.reduce((m, p) => Math.max(m, g.value(p)), 0);
      const scale = g.scale(peak);
      const d = stats.paths(pts, g.value, scale.top, box);
      svg.querySelector(".line").setAttribute("d", d.line);
      svg.querySelector(".area").setAttribute("d", d.area);
      svg.querySelector(".dot").setAttribute("d", d.dot);
      svg.dataset.points = String(pts.length);
      svg.dataset.minutes = String(series.minutes.size);
      svg.dataset.live = String(series.live.length);
      svg.dataset.top = String(scale.top);
      const span = duration(t1 - t0);
      $(g.key + "-max").textContent = pts.length ? scale.label : "";
      $(g.key + "-from").textContent = pts.length ? hhmm(t0) : "";
      $(g.key + "-to").textContent = pts.length ? hhmm(t1) : "";
      $(g.key + "-span").textContent = pts.length ? span : "no samples yet";
      $(g.key + "-svg-title").textContent = g.title + ": " + (pts.length
        ? "peak " + g.text(peak) + " over " + span + " (" + hhmm(t0) + "–" + hhmm(t1) + "), " +
          pts.length + " points"
        : "no samples yet");
    }
    renderStatsNow();
  }

  // the current values: the last sample while the server runs
  function renderStatsNow() {
    const last = series.lastLive();
    const running = SAMPLED.has(serverState());
    for (const g of GRAPHS) {
      const el = $(g.key + "-now");
      el.textContent = running && last ? g.text(g.value(last)) : "—";
      el.title = running && last ? "sampled at " + clock(last.at) : "not sampled: not running";
    }
  }

  // -- files ---------------------------------------------------------------------------------
  // The server's files directory through the host (the worker checks every path). File text
  // is untrusted like console text: it only reaches the page as textContent or a value.

  const EDIT_MAX = 4 * 1024 * 1024;   // files larger than this are download-only
  let filesPath = "";                 // the directory shown, relative to the files directory
  let editing = null;                 // the path open in the editor

  function joinPath(dir, name) { return dir ? dir + "/" + name : name; }

  function filesUrl(suffix, path) {
    return "/server/" + enc(selectedId) + "/files" + suffix + "?path=" + enc(path);
  }

  async function fetchRaw(method, url, body) {
    const used = token;
    if (!used) throw new AuthError("not signed in");
    const init = { method, cache: "no-store", credentials: "omit",
      headers: { Authorization: "Bearer " + used } };
    if (body !== undefined) init.body = body;
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, "unreachable", "the host is unreachable (" + e.message + ")");
    }
    if (resp.ok) return resp;
    let err = {};
    try { err = (await resp.json()).error || {}; } catch (e) { err = {}; }
    if (resp.status === 401) {
      if (token === used) signOut("Signed out: " + (err.message || "token refused"), true);
      throw new AuthError(err.message || "token refused");
    }
    throw new ApiError(resp.status, err.code || "http_" + resp.status,
      err.message || "HTTP " + resp.status);
  }

  function filesMessage(text, kind) { setMessage($("files-message"), text, kind); }

  function filesFailed(e) {
    if (!(e instanceof AuthError)) filesMessage(e.message, "error");
  }

  function resetFiles() {
    filesPath = "";
    closeEditor();
    $("files").tBodies[0].replaceChildren();
    filesMessage("");
    if ($("files-panel").open) loadFiles();
  }

  async function loadFiles() {
    if (!selectedId || !$("files-panel").open) return;
    const id = selectedId;
    const dir = filesPath;
    $("files-path").textContent = "/" + dir;
    $("files-up").disabled = !dir;
    const entries = [];
    let cursor = null;
    try {
      do {
        const page = await api("GET", "/server/" + enc(id) + "/files?limit=1000&path=" +
          enc(dir) + (cursor ? "&cursor=" + enc(cursor) : ""));
        entries.push(...page.entries);
        cursor = page.next_cursor;
      } while (cursor);
    } catch (e) {
      if (id === selectedId && dir === filesPath) filesFailed(e);
      return;
    }
    if (id !== selectedId || dir !== filesPath) return;
    renderFiles(entries);
  }

  function renderFiles(entries) {
    const body = $("files").tBodies[0];
    body.replaceChildren();
    entries.sort((a, b) => (a.type === "dir" ? 0 : 1) - (b.type === "dir" ? 0 : 1) ||
      (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const tr = body.insertRow();
      tr.dataset.name = e.name;
      tr.dataset.type = e.type;
      const name = tr.insertCell();
      name.className = "name";
      const path = joinPath(filesPath, e.name);
      if (e.type === "dir" || (e.type === "file" && e.size <= EDIT_MAX)) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = e.name + (e.type === "dir" ? "/" : "");
        b.addEventListener("click", () => {
          if (e.type === "dir") { filesPath = path; closeEditor(); loadFiles(); }
          else openEditor(path);
        });
        name.append(b);
      } else {
        name.append(document.createTextNode(e.name));
      }
      if (e.type === "link" || e.type === "other") {
        const k = document.createElement("span");
        k.className = "kind";
        k.textContent = e.type === "link" ? "→ " + (e.target || "") + " (link, not followed)"
          : "(" + e.type + ")";
        name.append(k);
      }
      const size = tr.insertCell();
      size.className = "num";
      size.textContent = e.type === "file" ? String(e.size) : "";
      tr.insertCell().textContent = day(e.mtime);
      const acts = tr.insertCell();
      acts.className = "acts";
      if (e.type === "file") {
        const dl = document.createElement("button");
        dl.type = "button";
        dl.className = "small-btn";
        dl.textContent = "Download";
        dl.addEventListener("click", () => download(path, e.name));
        acts.append(dl);
      }
      const del = document.createElement("button");
      del.type = "button";
      del.className = "small-btn danger";
      del.dataset.role = "delete";
      del.textContent = "Delete";
      del.addEventListener("click", () => {
        if (del.dataset.armed !== "1") {   // a second click confirms
          del.dataset.armed = "1";
          del.textContent = "Delete " + e.name + "?";
          return;
        }
        removeFile(path);
      });
      acts.append(del);
    }
  }

  async function removeFile(path) {
    try {
      await api("POST", "/server/" + enc(selectedId) + "/files/delete", { path });
      filesMessage(path + " deleted", "ok");
      if (editing === path) closeEditor();
    } catch (e) {
      filesFailed(e);
    }
    loadFiles();
  }

  async function download(path, name) {
    try {
      const blob = await (await fetchRaw("GET", filesUrl("/content", path))).blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (e) {
      filesFailed(e);
    }
  }

  async function openEditor(path) {
    const id = selectedId;
    let text;
    try {
      const buf = await (await fetchRaw("GET", filesUrl("/content", path))).arrayBuffer();
      if (buf.byteLength > EDIT_MAX) throw new ApiError(0, "too_large", "too large to edit");
      text = new TextDecoder("utf-8", { fatal: true }).decode(buf);
    } catch (e) {
      if (e instanceof TypeError) filesMessage(path + " is not UTF-8 text: download it", "error");
      else filesFailed(e);
      return;
    }
    if (id !== selectedId) return;
    editing = path;
    $("editor-path").textContent = path;
    $("editor-text").value = text;
    show($("editor"), true);
    filesMessage("");
  }

  function closeEditor() {
    editing = null;
    $("editor-text").value = "";
    show($("editor"), false);
  }

  async function saveEditor() {
    if (editing === null) return;
    const path = editing;
    const button = $("editor-save");
    button.disabled = true;
    try {
      const blob = new Blob([$("editor-text").value], { type: "application/octet-stream" });
      await fetchRaw("PUT", filesUrl("/content", path), blob);
      filesMessage(path + " saved", "ok");
      loadFiles();
    } catch (e) {
      filesFailed(e);
    } finally {
      button.disabled = false;
    }
  }

  async function uploadFile(ev) {
    const input = ev.target;
    const file = input.files && input.files[0];
    input.value = "";
    if (!file) return;
    const path = joinPath(filesPath, file.name);
    filesMessage("uploading " + path + "…");
    try {
      await fetchRaw("PUT", filesUrl("/content", path), file);
      filesMessage(path + " uploaded", "ok");
    } catch (e) {
      filesFailed(e);
    }
    loadFiles();
  }

  async function makeFolder() {
    const name = $("files-name").value.trim();
    if (!name) return;
    try {
      await api("POST", "/server/" + enc(selectedId) + "/files/mkdir",
        { path: joinPath(filesPath, name) });
      $("files-name").value = "";
      filesMessage("");
    } catch (e) {
      filesFailed(e);
    }
    loadFiles();
  }

  // -- schedules -----------------------------------------------------------------------------
  // A server's schedules through the host (each change is a spec update the worker converges
  // to); runs are the host's copy: each run once it ended, reported by the worker with its
  // heartbeats (shown while the worker is away too). Times come in UTC and are shown local.

  const ACTIONS = ["command", "notify", "wait", "start", "stop", "restart", "kill", "update",
    "backup"];
  const AWAITS = ["", "none", "done", "ready", "stopped"];   // "": the action's default
  const SCHEDULES_MS = 5000;   // list and runs refresh while the panel is open
  const RUNS_SHOWN = 10;
  let schedules = [];          // the open server's schedules, as GET answers them
  let runsFor = null;          // the schedule whose runs are shown
  let schedulesTimer = null;
  let armedDelete = null;      // the schedule whose Delete was clicked once (survives refresh)
  let rendered = "";           // what the table shows: a refresh that changes nothing is no redraw

  function schedUrl(suffix) {
    return "/server/" + enc(selectedId) + "/schedule" + (suffix || "");
  }

  function schedMessage(text, kind) { setMessage($("schedules-message"), text, kind); }

  // "2026-12-02 05:00 (04:00 UTC)": local time, then UTC
  function localAndUtc(iso) {
    if (!iso) return "—";
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const d = new Date(t);
    return day(t / 1000) + " (" + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) +
      (d.getUTCDate() !== d.getDate() ? " " + iso.slice(0, 10) : "") + " UTC)";
  }

  function taskText(t) {
    return t.action + (t.payload != null ? " " + t.payload : "") +
      (t.delay ? " +" + t.delay + "s" : "") + (t.await && t.await !== "none" ? " (await " + t.await + ")" : "");
  }

  function resetSchedules() {
    schedules = [];
    runsFor = null;
    armedDelete = null;
    rendered = "";
    clearTimeout(schedulesTimer);
    $("schedules").tBodies[0].replaceChildren();
    $("runs").tBodies[0].replaceChildren();
    show($("schedule-runs"), false);
    show($("schedules-empty"), false);
    schedMessage("");
    setMessage($("schedule-form-message"), "");
    if ($("schedules-panel").open) loadSchedules();
  }

  async function loadSchedules() {
    clearTimeout(schedulesTimer);
    if (!selectedId || !$("schedules-panel").open) return;
    const id = selectedId;
    try {
      const r = await api("GET", schedUrl());
      if (id !== selectedId) return;
      schedules = r.schedules || [];
      if (runsFor && !schedules.some((s) => s.id === runsFor)) runsFor = null;
      renderSchedules();
      if (runsFor) await loadRuns(runsFor);
    } catch (e) {
      if (!(e instanceof AuthError) && id === selectedId) schedMessage(e.message, "error");
    }
    if (id === selectedId && $("schedules-panel").open) {
      schedulesTimer = setTimeout(loadSchedules, SCHEDULES_MS);
    }
  }

  function button(text, role, onClick, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "small-btn" + (cls ? " " + cls : "");
    b.dataset.role = role;
    b.textContent = text;
    b.addEventListener("click", onClick);
    return b;
  }

  function renderSchedules() {
    const key = JSON.stringify([schedules, runsFor, armedDelete]);
    if (key === rendered) return;
    rendered = key;
    const body = $("schedules").tBodies[0];
    body.replaceChildren();
    show($("schedules-empty"), schedules.length === 0);
    for (const s of schedules) {
      const tr = body.insertRow();
      tr.dataset.scheduleId = s.id;
      tr.classList.toggle("disabled", !s.enabled);
      tr.classList.toggle("shown", s.id === runsFor);
      tr.insertCell().textContent = s.id + (s.name ? " · " + s.name : "");
      const cron = tr.insertCell();
      cron.className = "cron";
      cron.textContent = s.cron;
      tr.insertCell().textContent = s.timezone;
      const en = tr.insertCell();
      en.className = "enabled";
      en.textContent = s.enabled ? "yes" : "no";
      const next = tr.insertCell();
      next.className = "next";
      next.textContent = localAndUtc(s.next_run_at);
      if (s.next_run_at) next.title = s.next_run_at;
      const tasks = tr.insertCell();
      tasks.className = "tasks";
      tasks.textContent = s.tasks.map(taskText).join(" → ");
      const acts = tr.insertCell();
      acts.className = "acts";
      acts.append(
        button("Run now", "run", () => runNow(s.id)),
        button("Runs", "runs", () => { runsFor = s.id; renderSchedules(); loadRuns(s.id); }),
        button(s.enabled ? "Disable" : "Enable", "toggle", () => toggleSchedule(s)));
      const del = button(armedDelete === s.id ? "Delete " + s.id + "?" : "Delete", "delete",
        () => {
          if (armedDelete !== s.id) {   // a second click confirms
            armedDelete = s.id;
            renderSchedules();
            return;
          }
          armedDelete = null;
          removeSchedule(s.id);
        }, "danger");
      acts.append(del);
    }
  }

  async function scheduleChange(method, suffix, body, done) {
    const id = selectedId;
    try {
      const r = await api(method, schedUrl(suffix), body);
      if (id === selectedId) schedMessage(done, "ok");
      return r;
    } catch (e) {
      if (!(e instanceof AuthError) && id === selectedId) schedMessage(e.message, "error");
      return null;
    } finally {
      if (id === selectedId) loadSchedules();
    }
  }

  function toggleSchedule(s) {
    // a PUT replaces the whole schedule: send it back as it is, the flag flipped
    const body = { id: s.id, name: s.name, cron: s.cron, timezone: s.timezone,
      enabled: !s.enabled, only_when: s.only_when, defer_max: s.defer_max, tasks: s.tasks };
    return scheduleChange("PUT", "/" + enc(s.id), body,
      s.id + (s.enabled ? " disabled" : " enabled"));
  }

  function removeSchedule(sid) {
    if (runsFor === sid) { runsFor = null; show($("schedule-runs"), false); }
    return scheduleChange("DELETE", "/" + enc(sid), undefined, sid + " deleted");
  }

  async function runNow(sid) {
    runsFor = sid;
    const r = await scheduleChange("POST", "/" + enc(sid) + "/run", undefined,
      sid + " started");
    if (r) setTimeout(() => { if (runsFor === sid) loadRuns(sid); }, 1000);
  }

  async function loadRuns(sid) {
    const id = selectedId;
    let runs;
    try {
      runs = (await api("GET", schedUrl("/" + enc(sid) + "/runs"))).runs || [];
    } catch (e) {
      if (!(e instanceof AuthError) && id === selectedId) schedMessage(e.message, "error");
      return;
    }
    if (id !== selectedId || sid !== runsFor) return;
    $("schedule-runs-title").textContent = "Last runs of " + sid;
    const body = $("runs").tBodies[0];
    body.replaceChildren();
    for (const run of runs.slice(0, RUNS_SHOWN)) {
      const tr = body.insertRow();
      tr.dataset.runId = String(run.id);
      tr.dataset.status = run.status;
      const n = tr.insertCell();
      n.className = "num";
      n.textContent = String(run.id);
      tr.insertCell().textContent = run.trigger;
      tr.insertCell().textContent = localAndUtc(run.started_at);
      const st = tr.insertCell();
      st.className = "status run-" + run.status;
      st.textContent = run.status + (run.reason ? ": " + run.reason : "");
      const tasks = tr.insertCell();
      tasks.className = "tasks";
      for (const t of run.tasks || []) {
        const span = document.createElement("span");
        span.className = "task " + (t.skipped ? "skipped" : t.ok ? "ok" : "fail");
        span.textContent = t.action + (t.skipped ? " — skipped: " + t.skipped
          : t.error ? " — " + t.error : "");
        tasks.append(span);
      }
    }
    if (!runs.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = 5;
      td.className = "muted";
      td.textContent = "no runs yet";
    }
    show($("schedule-runs"), true);
  }

  function addTaskRow(action) {
    const tr = $("schedule-tasks").tBodies[0].insertRow();
    const act = document.createElement("select");
    act.className = "action";
    act.setAttribute("aria-label", "action");
    act.replaceChildren(...ACTIONS.map((a) => new Option(a, a)));
    act.value = action || "command";
    const payload = document.createElement("input");
    payload.type = "text";
    payload.className = "payload";
    payload.spellcheck = false;
    payload.maxLength = 4096;
    payload.setAttribute("aria-label", "payload");
    payload.placeholder = "console line, seconds, or message";
    const delay = document.createElement("input");
    delay.type = "number";
    delay.className = "delay";
    delay.min = "0";
    delay.step = "any";
    delay.value = "0";
    delay.setAttribute("aria-label", "delay in seconds");
    const wait = document.createElement("select");
    wait.className = "await";
    wait.setAttribute("aria-label", "await");
    wait.replaceChildren(...AWAITS.map((a) => new Option(a || "(default)", a)));
    const remove = button("Remove", "remove-task", () => tr.remove());
    for (const el of [act, payload, delay, wait, remove]) tr.insertCell().append(el);
    return tr;
  }

  function resetScheduleForm() {
    $("schedule-cron").value = "";
    let zone = "UTC";
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { /**/ }
    $("schedule-tz").value = zone;
    $("schedule-tasks").tBodies[0].replaceChildren();
    addTaskRow("command");
  }

  async function onAddSchedule(ev) {
    ev.preventDefault();
    const tasks = [];
    for (const tr of $("schedule-tasks").tBodies[0].rows) {
      const t = { action: tr.querySelector(".action").value };
      const payload = tr.querySelector(".payload").value;
      if (payload !== "") t.payload = payload;
      const delay = Number(tr.querySelector(".delay").value || 0);
      if (delay) t.delay = delay;
      const wait = tr.querySelector(".await").value;
      if (wait) t.await = wait;
      tasks.push(t);
    }
    const body = { cron: $("schedule-cron").value.trim(), tasks };
    const tz = $("schedule-tz").value.trim();
    if (tz) body.timezone = tz;
    const id = selectedId;
    const submit = $("schedule-submit");
    submit.disabled = true;
    const msg = $("schedule-form-message");
    setMessage(msg, "adding…");
    try {
      const s = await api("POST", schedUrl(), body);
      if (id !== selectedId) return;
      setMessage(msg, "");
      schedMessage(s.id + " added; next run " + localAndUtc(s.next_run_at), "ok");
      resetScheduleForm();
      loadSchedules();
    } catch (e) {   // the API's reason, in the form
      if (!(e instanceof AuthError) && id === selectedId) setMessage(msg, e.message, "error");
    } finally {
      submit.disabled = false;
    }
  }

  // -- backups -------------------------------------------------------------------------------
  // A server's backups through the host (the list is the worker's last report when it is
  // away). Restore is only offered while the server is stopped (the worker refuses it else).
  // The download goes through fetch, as a file's does: the token stays in a header.

  const BACKUPS_MS = 5000;          // the list refreshes while the panel is open
  const RESTORABLE = new Set(["created", "stopped", "failed"]);
  let backups = [];
  let backupsTimer = null;
  let backupArmed = null;           // "delete:ID" or "restore:ID", clicked once (survives refresh)
  let backupsShown = "";            // what the table shows: a refresh that changes nothing is no redraw

  function backupUrl(suffix) {
    return "/server/" + enc(selectedId) + "/backup" + (suffix || "");
  }

  function backupMessage(text, kind) { setMessage($("backups-message"), text, kind); }

  function sizeText(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function serverState() {
    const s = findServer(selectedId);
    const live = term && term.live && term.liveState ? term.liveState : null;
    return live ? live.state : (s ? s.state : "unknown");
  }

  function resetBackups() {
    backups = [];
    backupArmed = null;
    backupsShown = "";
    clearTimeout(backupsTimer);
    $("backups").tBodies[0].replaceChildren();
    show($("backups-empty"), false);
    backupMessage("");
    if ($("backups-panel").open) loadBackups();
  }

  async function loadBackups() {
    clearTimeout(backupsTimer);
    if (!selectedId || !$("backups-panel").open) return;
    const id = selectedId;
    try {
      const r = await api("GET", backupUrl());
      if (id !== selectedId) return;
      backups = r.backups || [];
      renderBackups();
    } catch (e) {
      if (!(e instanceof AuthError) && id === selectedId) backupMessage(e.message, "error");
    }
    if (id === selectedId && $("backups-panel").open) {
      backupsTimer = setTimeout(loadBackups, BACKUPS_MS);
    }
  }

  function renderBackups() {
    const stopped = RESTORABLE.has(serverState());
    const key = JSON.stringify([backups, backupArmed, stopped]);
    if (key === backupsShown) return;
    backupsShown = key;
    const body = $("backups").tBodies[0];
    body.replaceChildren();
    show($("backups-empty"), backups.length === 0);
    show($("backups-stopped-hint"), !stopped && backups.some((b) => b.state === "ok"));
    for (const b of backups.slice().reverse()) {   // newest first
      const tr = body.insertRow();
      tr.dataset.backupId = b.id;
      tr.className = "state-" + (b.state === "failed" ? "failed" : "other");
      const name = tr.insertCell();
      name.textContent = b.name;
      name.title = b.id + (b.sha256 ? "\nsha256 " + b.sha256 : "");
      const st = tr.insertCell();
      st.className = "state";
      st.textContent = b.state + (b.error ? ": " + b.error : "");
      const size = tr.insertCell();
      size.className = "num";
      size.textContent = b.state === "ok" ? sizeText(b.bytes)
        : b.state === "running" && b.read_bytes   // files read so far, of their size on disk
          ? sizeText(b.read_bytes) + (b.total_bytes ? " of " + sizeText(b.total_bytes) : "")
          : "";
      if (b.state === "ok") size.title = b.bytes + " bytes";
      tr.insertCell().textContent = day(b.created_at);
      const lk = tr.insertCell();
      lk.className = "locked";
      lk.textContent = b.locked ? "yes" : "no";
      const acts = tr.insertCell();
      acts.className = "acts";
      const done = b.state === "ok" || b.state === "failed";
      if (b.state === "ok") {
        acts.append(button("Download", "download", () => downloadBackup(b)));
        if (stopped) {
          acts.append(armed(b, "restore", "Restore", () => restoreBackup(b)));
        }
      }
      acts.append(button(b.locked ? "Unlock" : "Lock", "lock", () => lockBackup(b, !b.locked)));
      if (done && !b.locked) acts.append(armed(b, "delete", "Delete", () => removeBackup(b)));
    }
  }

  // a button whose second click confirms
  function armed(b, role, text, act) {
    const mine = role + ":" + b.id;
    return button(backupArmed === mine ? text + " " + b.name + "?" : text, role, () => {
      if (backupArmed !== mine) {
        backupArmed = mine;
        renderBackups();
        return;
      }
      backupArmed = null;
      act();
    }, "danger");
  }

  async function backupChange(method, suffix, body, done) {
    const id = selectedId;
    try {
      const r = await api(method, backupUrl(suffix), body);
      if (id === selectedId) backupMessage(done, "ok");
      return r;
    } catch (e) {
      if (!(e instanceof AuthError) && id === selectedId) backupMessage(e.message, "error");
      return null;
    } finally {
      if (id === selectedId) loadBackups();
    }
  }

  function createBackup() {
    const body = { locked: $("backup-lock").checked };
    const name = $("backup-name").value.trim();
    if (name) body.name = name;
    $("backup-name").value = "";
    $("backup-lock").checked = false;
    return backupChange("POST", "", body, "backup started");
  }

  function lockBackup(b, locked) {
    return backupChange("PUT", "/" + enc(b.id), { locked },
      b.name + (locked ? " locked" : " unlocked"));
  }

  function removeBackup(b) {
    return backupChange("DELETE", "/" + enc(b.id), undefined, b.name + " deleted");
  }

  function restoreBackup(b) {
    backupMessage("restoring " + b.name + "…");
    return backupChange("POST", "/" + enc(b.id) + "/restore",
      { truncate: $("backup-truncate").checked }, b.name + " restored");
  }

  async function downloadBackup(b) {
    backupMessage("downloading " + b.name + "…");
    try {
      const resp = await fetchRaw("GET", backupUrl("/" + enc(b.id) + "/download"));
      const blob = await resp.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = b.id + ".tar.zst";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      backupMessage("");
    } catch (e) {
      if (!(e instanceof AuthError)) backupMessage(e.message, "error");
    }
  }

  function initBackups() {
    $("backups-panel").addEventListener("toggle", () => loadBackups());
    $("backups-refresh").addEventListener("click", () => loadBackups());
    $("backup-create").addEventListener("click", createBackup);
    // the server's state decides whether Restore is offered
    setInterval(() => { if (selectedId && $("backups-panel").open) renderBackups(); }, 1000);
  }

  // -- host views: webhooks and the audit trail ------------------------------------------------
  // Admin routes of the host (the web console signs in with the admin token; a token the host
  // answers 403 on these routes shows why instead of the view). API strings reach the page as
  // textContent only, as console text does.

  // The events a webhook can subscribe to. No API lists them: this mirrors the events table
  // of docs/spec.md ("Webhooks"; webhook.test is sent by a test only), and
  // tests/test_web_admin.py checks it against manman/events.py.
  const HOOK_EVENTS = ["server.ready", "server.stopped", "server.crashed", "server.failed",
    "server.update_available", "server.updated", "server.disk_full", "schedule.failed",
    "backup.ok", "backup.failed", "player.joined", "player.left", "worker.unknown",
    "worker.alive", "worker.expired"];
  // suggestions for the audit's action filter (any action or dotted prefix works)
  const AUDIT_ACTIONS = ["server", "server.create", "server.update", "server.delete",
    "server.start", "server.stop", "server.restart", "server.kill", "server.command",
    "server.console", "server.files", "server.schedule", "server.backup", "worker",
    "worker.join", "worker.update", "worker.retire", "webhook", "webhook.create",
    "webhook.update", "webhook.delete", "webhook.test"];
  const HOOKS_MS = 5000;        // the list (and deliveries shown) refresh while the view is open
  const AUDIT_PAGE = 50;        // rows per page; "Older entries" fetches the next
  let adminView = null;         // "webhooks" or "audit" while one is shown
  let hooks = [];
  let hooksTimer = null;
  let hooksShown = "";          // what the table shows: a refresh that changes nothing is no redraw
  let deliveriesFor = null;     // the hook whose deliveries are shown
  let hookArmed = null;         // the hook whose Delete was clicked once
  let auditCursor = null;       // the next (older) page's cursor
  let auditGen = 0;             // a newer load makes an older answer moot

  function stamp(ts) { return day(ts) + ":" + pad(new Date(ts * 1000).getSeconds()); }

  // a 403: this token may not use the view; said in place of the view, not as a broken panel
  function denied(view, e) {
    if (!(e instanceof ApiError) || e.status !== 403) return false;
    const what = view === "webhooks" ? "Webhooks are" : "The audit trail is";
    setMessage($(view + "-denied"), what + " only for the host's admin token, and the " +
      "token this tab signed in with was refused here (" + e.message + "). Sign out and " +
      "sign in with the admin token.", "error");
    show($(view + "-body"), false);
    return true;
  }

  function openAdmin(view) {
    closeConsole();
    selectedId = null;
    adminView = view;
    show($("server-view"), false);
    show($("new-server-view"), false);
    show($("no-selection"), false);
    renderServers();
    for (const v of ["webhooks", "audit"]) {
      show($(v + "-view"), v === view);
      if (v === view) $("nav-" + v).setAttribute("aria-current", "page");
      else $("nav-" + v).removeAttribute("aria-current");
      setMessage($(v + "-denied"), "");
      show($(v + "-body"), true);
    }
    document.title = "manman — " + (view === "webhooks" ? "webhooks" : "audit trail");
    adminServers();
    if (view === "webhooks") {
      hooksShown = "";
      setMessage($("webhook-form-message"), "");
      loadHooks();
    } else {
      loadAudit(false);
    }
  }

  function closeAdmin() {
    if (adminView === null) return;
    adminView = null;
    clearTimeout(hooksTimer);
    auditGen++;
    show($("webhooks-view"), false);
    show($("audit-view"), false);
    for (const v of ["webhooks", "audit"]) $("nav-" + v).removeAttribute("aria-current");
  }

  // a select of the servers (by name), the first option "" for none
  function serverOptions(select, none) {
    const chosen = select.value;
    select.replaceChildren(new Option(none, ""), ...[...servers.values()]
      .sort((a, b) => a.name.localeCompare(b.name)).map((s) => new Option(s.name, s.id)));
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }

  function adminServers() {
    serverOptions($("webhook-server"), "every server, and the workers");
    serverOptions($("audit-server"), "every server");
  }

  function serverLabel(id) {
    if (!id) return "all";
    const s = servers.get(id);
    return s ? s.name : id;
  }

  // -- webhooks

  function hooksMessage(text, kind) { setMessage($("webhooks-message"), text, kind); }

  async function loadHooks() {
    clearTimeout(hooksTimer);
    if (adminView !== "webhooks") return;
    try {
      hooks = (await api("GET", "/webhook")).webhooks || [];
      if (adminView !== "webhooks") return;
      if (deliveriesFor && !hooks.some((h) => h.id === deliveriesFor)) {
        deliveriesFor = null;
        show($("hook-deliveries"), false);
      }
      renderHooks();
      if (deliveriesFor) await loadDeliveries(deliveriesFor);
    } catch (e) {
      if (e instanceof AuthError || adminView !== "webhooks" || denied("webhooks", e)) return;
      hooksMessage(e.message, "error");
    }
    if (adminView === "webhooks") hooksTimer = setTimeout(loadHooks, HOOKS_MS);
  }

  function renderHooks() {
    const key = JSON.stringify([hooks, deliveriesFor, hookArmed,
      hooks.map((h) => serverLabel(h.server_id))]);
    if (key === hooksShown) return;
    hooksShown = key;
    const body = $("webhooks").tBodies[0];
    body.replaceChildren();
    show($("webhooks-empty"), hooks.length === 0);
    for (const h of hooks) {
      const tr = body.insertRow();
      tr.dataset.hookId = h.id;
      tr.classList.toggle("disabled", !h.enabled);
      tr.classList.toggle("shown", h.id === deliveriesFor);
      const url = tr.insertCell();
      url.className = "url";
      url.textContent = h.url;
      url.title = h.url + "\n" + h.id;
      tr.insertCell().textContent = h.kind;
      const ev = tr.insertCell();
      ev.className = "events";
      ev.textContent = h.events.join(", ");
      const sv = tr.insertCell();
      sv.className = "server";
      sv.textContent = serverLabel(h.server_id);
      const en = tr.insertCell();
      en.className = "enabled";
      en.textContent = h.enabled ? "yes" : "no";
      const sec = tr.insertCell();
      sec.className = "secret";
      sec.textContent = h.has_secret ? "yes" : "no";
      const acts = tr.insertCell();
      acts.className = "acts";
      acts.append(
        button("Deliveries", "deliveries", () => {
          deliveriesFor = h.id;
          renderHooks();
          loadDeliveries(h.id);
        }),
        button("Test", "test", () => testHook(h)),
        button(h.enabled ? "Disable" : "Enable", "toggle", () => hookChange("PUT",
          h.id, { enabled: !h.enabled }, h.url + (h.enabled ? " disabled" : " enabled"))),
        button(hookArmed === h.id ? "Delete this hook?" : "Delete", "delete", () => {
          if (hookArmed !== h.id) {   // a second click confirms
            hookArmed = h.id;
            renderHooks();
            return;
          }
          hookArmed = null;
          hookChange("DELETE", h.id, undefined, h.url + " deleted");
        }, "danger"));
    }
  }

  async function hookChange(method, hid, body, done) {
    try {
      await api(method, "/webhook/" + enc(hid), body);
      if (adminView === "webhooks") hooksMessage(done, "ok");
    } catch (e) {
      if (!(e instanceof AuthError) && adminView === "webhooks" && !denied("webhooks", e)) {
        hooksMessage(e.message, "error");
      }
    }
    loadHooks();
  }

  async function testHook(h) {
    hooksMessage("sending a test to " + h.url + "…");
    deliveriesFor = h.id;
    try {
      const a = await api("POST", "/webhook/" + enc(h.id) + "/test");
      if (adminView !== "webhooks") return;
      hooksMessage(a.ok ? "test delivered: " + a.status + " in " + Math.round(a.latency_ms) +
        " ms" : "test failed: " + (a.status != null ? "HTTP " + a.status : "no answer") +
        (a.error ? " — " + a.error : ""), a.ok ? "ok" : "error");
    } catch (e) {
      if (!(e instanceof AuthError) && adminView === "webhooks" && !denied("webhooks", e)) {
        hooksMessage(e.message, "error");
      }
    }
    loadHooks();
  }

  async function loadDeliveries(hid) {
    let list;
    try {
      list = (await api("GET", "/webhook/" + enc(hid) + "/deliveries")).deliveries || [];
    } catch (e) {
      if (!(e instanceof AuthError) && adminView === "webhooks" && !denied("webhooks", e)) {
        hooksMessage(e.message, "error");
      }
      return;
    }
    if (adminView !== "webhooks" || hid !== deliveriesFor) return;
    const h = hooks.find((x) => x.id === hid);
    $("hook-deliveries-title").textContent = "Last deliveries to " + (h ? h.url : hid);
    const body = $("deliveries").tBodies[0];
    body.replaceChildren();
    for (const a of list) {
      const tr = body.insertRow();
      tr.dataset.eventId = a.event_id;
      tr.dataset.ok = a.ok ? "1" : "0";
      tr.className = a.ok ? "ok" : "fail";
      tr.insertCell().textContent = stamp(a.at);
      const ev = tr.insertCell();
      ev.className = "event";
      ev.textContent = a.event;
      const n = tr.insertCell();
      n.className = "num";
      n.textContent = String(a.attempt);
      const st = tr.insertCell();
      st.className = "status";
      st.textContent = (a.ok ? "ok " : "failed ") + (a.status != null ? a.status : "—");
      const lat = tr.insertCell();
      lat.className = "num latency";
      lat.textContent = Math.round(a.latency_ms) + " ms";
      const err = tr.insertCell();
      err.className = "error";
      err.textContent = a.error || "";
      tr.insertCell().textContent = a.next_attempt_at ? stamp(a.next_attempt_at) : "—";
    }
    if (!list.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = 7;
      td.className = "muted";
      td.textContent = "no deliveries yet";
    }
    show($("hook-deliveries"), true);
  }

  function renderEventBoxes() {
    const set = $("webhook-events");
    set.replaceChildren(set.querySelector("legend"));
    for (const name of HOOK_EVENTS) {
      const label = document.createElement("label");
      label.className = "inline";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = name;
      box.dataset.event = name;
      label.append(box, document.createTextNode(" " + name));
      set.append(label);
    }
  }

  function onHookKind() {
    const generic = $("webhook-kind").value === "generic";
    $("webhook-secret").disabled = !generic;   // only a generic hook's bodies are signed
    if (!generic) $("webhook-secret").value = "";
  }

  async function onAddHook(ev) {
    ev.preventDefault();
    const msg = $("webhook-form-message");
    const events = [...$("webhook-events").querySelectorAll("input:checked")].map((b) => b.value);
    if (!events.length) {
      setMessage(msg, "Choose at least one event.", "error");
      return;
    }
    const body = { url: $("webhook-url").value.trim(), kind: $("webhook-kind").value, events,
      enabled: $("webhook-enabled").checked };
    if ($("webhook-server").value) body.server_id = $("webhook-server").value;
    const secret = $("webhook-secret").value;
    if (secret && body.kind === "generic") body.secret = secret;
    const submit = $("webhook-submit");
    submit.disabled = true;
    setMessage(msg, "adding…");
    try {
      const h = await api("POST", "/webhook", body);
      setMessage(msg, "");
      hooksMessage(h.url + " added", "ok");
      $("webhook-url").value = "";
      $("webhook-secret").value = "";
      for (const b of $("webhook-events").querySelectorAll("input")) b.checked = false;
      loadHooks();
    } catch (e) {   // the API's reason, next to the form
      if (!(e instanceof AuthError) && !denied("webhooks", e)) setMessage(msg, e.message, "error");
    } finally {
      $("webhook-secret").value = "";   // a secret typed is not kept in the page
      submit.disabled = false;
    }
  }

  // -- the audit trail

  async function loadAudit(older) {
    if (adminView !== "audit") return;
    const gen = ++auditGen;
    const q = new URLSearchParams({ limit: String(AUDIT_PAGE) });
    if ($("audit-server").value) q.set("server_id", $("audit-server").value);
    const action = $("audit-action").value.trim();
    if (action) q.set("action", action);
    const since = Number($("audit-since").value);
    if (since) q.set("since", String(Math.floor(Date.now() / 1000) - since));
    if (older && auditCursor) q.set("cursor", auditCursor);
    let page;
    try {
      page = await api("GET", "/audit?" + q.toString());
    } catch (e) {
      if (e instanceof AuthError || gen !== auditGen || denied("audit", e)) return;
      setMessage($("audit-message"), e.message, "error");
      return;
    }
    if (gen !== auditGen) return;
    setMessage($("audit-message"), "");
    const body = $("audit").tBodies[0];
    if (!older) body.replaceChildren();
    for (const a of page.entries || []) {
      const tr = body.insertRow();
      tr.dataset.auditId = String(a.id);
      tr.dataset.action = a.action;
      tr.classList.toggle("refused", a.status != null && a.status >= 400);
      const t = tr.insertCell();
      t.textContent = stamp(a.at);
      const who = tr.insertCell();
      who.className = "actor";
      who.textContent = a.actor;
      who.title = "from " + a.source;
      const act = tr.insertCell();
      act.className = "action";
      act.textContent = a.action;
      const target = tr.insertCell();
      target.className = "target";
      target.textContent = a.target;
      target.title = a.target;
      const st = tr.insertCell();
      st.className = "num status";
      st.textContent = a.status == null ? "—" : String(a.status);
      const res = tr.insertCell();
      res.className = "result";
      res.textContent = [a.result, a.detail].filter((x) => x).join(" · ");
    }
    auditCursor = page.next_cursor || null;
    show($("audit-more"), Boolean(auditCursor));
    show($("audit-empty"), body.rows.length === 0);
  }

  function initAdmin() {
    renderEventBoxes();
    $("audit-actions").replaceChildren(...AUDIT_ACTIONS.map((a) => new Option(a)));
    $("webhook-kind").addEventListener("change", onHookKind);
    $("webhook-form").addEventListener("submit", onAddHook);
    $("webhooks-refresh").addEventListener("click", () => { hooksShown = ""; loadHooks(); });
    $("audit-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadAudit(false); });
    for (const id of ["audit-server", "audit-since"]) {
      $(id).addEventListener("change", () => loadAudit(false));
    }
    $("audit-refresh").addEventListener("click", () => loadAudit(false));
    $("audit-more").addEventListener("click", () => loadAudit(true));
  }

  // -- wiring --------------------------------------------------------------------------------

  function init() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout-button").addEventListener("click", () => {
      location.hash = "";
      signOut("Signed out.", false);
    });
    $("servers").tBodies[0].addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-server-id]");
      if (tr) location.hash = "#/server/" + enc(tr.dataset.serverId);
    });
    $("servers").tBodies[0].addEventListener("keydown", (ev) => {
      const tr = ev.target.closest("tr[data-server-id]");
      if (tr && (ev.key === "Enter" || ev.key === " ")) {
        ev.preventDefault();
        location.hash = "#/server/" + enc(tr.dataset.serverId);
      }
    });
    $("new-server-button").addEventListener("click", () => { location.hash = "#/new"; });
    $("new-preset").addEventListener("change", renderPresetFields);
    $("new-server-form").addEventListener("submit", onCreate);
    document.querySelector(".actions").addEventListener("click", onAction);
    $("command-form").addEventListener("submit", onCommand);
    $("command-input").addEventListener("keydown", onCommandKey);
    $("console-clear").addEventListener("click", () => { if (term) term.clear(); });
    $("console-follow").addEventListener("click", () => {
      const el = $("console");
      el.scrollTop = el.scrollHeight;
    });
    $("files-panel").addEventListener("toggle", () => loadFiles());
    $("files-up").addEventListener("click", () => {
      filesPath = filesPath.includes("/") ? filesPath.slice(0, filesPath.lastIndexOf("/")) : "";
      closeEditor();
      loadFiles();
    });
    $("files-refresh").addEventListener("click", () => loadFiles());
    $("files-mkdir").addEventListener("click", makeFolder);
    $("files-upload").addEventListener("change", uploadFile);
    $("editor-save").addEventListener("click", saveEditor);
    $("editor-close").addEventListener("click", closeEditor);
    $("schedules-panel").addEventListener("toggle", () => loadSchedules());
    $("schedules-refresh").addEventListener("click", () => loadSchedules());
    $("schedule-add-task").addEventListener("click", () => addTaskRow());
    $("schedule-form").addEventListener("submit", onAddSchedule);
    initBackups();
    initAdmin();
    resetScheduleForm();
    window.addEventListener("hashchange", route);
    setInterval(() => { if (token && selectedId) renderServerView(); }, 1000);   // uptime
    if (token) showMain();
    else showLogin("", false);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
