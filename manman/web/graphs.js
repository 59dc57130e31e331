// manman web console: the stats graphs' data and drawing, pure (no DOM, no network), so that
// the page (app.js) and its tests use the same code. Plain JavaScript, no build step.
//
// A series holds a server's minute points (from GET /server/{id}/stats) and a live tail of
// samples (the console websocket's stats frames), bounded: a day of minutes, and the tail's
// oldest minutes fold into minute points as the worker's history keeps them (mean CPU, peak
// memory). Only finite, non-negative numbers are taken; only numbers reach a path.
"use strict";

window.manmanStats = (() => {
  const DAY_S = 24 * 3600;

  function sample(p) {
    return Boolean(p) && typeof p.at === "number" && isFinite(p.at) && p.at > 0 &&
      typeof p.cpu === "number" && isFinite(p.cpu) && p.cpu >= 0 &&
      typeof p.memory === "number" && isFinite(p.memory) && p.memory >= 0;
  }

  class Series {
    constructor(opts) {
      const o = opts || {};
      this.liveKeep = o.liveKeep ?? 900;   // seconds of live samples before they fold
      this.liveMax = o.liveMax ?? 900;     // and their most (a short stats_interval)
      this.span = o.span ?? DAY_S;         // older points are dropped
      this.minutes = new Map();            // minute number -> {at, cpu, memory}
      this.live = [];                      // {at, cpu, memory, minute}, oldest first
    }

    // history points; a minute is drawn at its start, before any live sample of that minute
    addHistory(points) {
      for (const p of points || []) {
        if (sample(p)) {
          this.minutes.set(Math.floor(p.at / 60), { at: p.at, cpu: p.cpu, memory: p.memory });
        }
      }
      this.trim();
    }

    // a stats frame; false when it is not newer than the last (the latest is resent on
    // every connect) or not a sample
    addLive(f) {
      if (!sample(f)) return false;
      const last = this.lastLive();
      if (last && f.at <= last.at) return false;
      this.live.push({ at: f.at, cpu: f.cpu, memory: f.memory, minute: Math.floor(f.at / 60) });
      this.trim();
      return true;
    }

    lastLive() { return this.live.length ? this.live[this.live.length - 1] : null; }

    trim() {
      const live = this.live;
      while (live.length && (live.length > this.liveMax ||
          live[0].at < live[live.length - 1].at - this.liveKeep)) {
        const minute = live[0].minute;
        let n = 0;
        let cpu = 0;
        let memory = 0;
        while (live.length && live[0].minute === minute) {
          const p = live.shift();
          n++;
          cpu += p.cpu;
          memory = Math.max(memory, p.memory);
        }
        const had = this.minutes.get(minute);
        this.minutes.set(minute, { at: had ? had.at : minute * 60, cpu: cpu / n,
          memory: had ? Math.max(had.memory, memory) : memory });
      }
      let newest = live.length ? live[live.length - 1].at : 0;
      for (const p of this.minutes.values()) newest = Math.max(newest, p.at);
      for (const [minute, p] of this.minutes) {
        if (p.at < newest - this.span) this.minutes.delete(minute);
      }
    }

    points() {
      const pts = Array.from(this.minutes.values()).concat(this.live);
      pts.sort((a, b) => a.at - b.at);
      return pts;
    }

    // samples further apart than this are not joined: the server was not running between
    gap(least) {
      const n = this.live.length;   // a long stats_interval spaces even a running server's
      return Math.max(least, n > 1 ? 2.5 * (this.live[n - 1].at - this.live[n - 2].at) : 0);
    }
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v * (1 - 1e-9)) return m * p;
    return 10 * p;
  }

  function cpuText(v) { return (v < 10 ? v.toFixed(1) : String(Math.round(v))) + " %"; }

  // the top of the CPU scale: a round number of %, at least 1
  function cpuScale(peak) {
    const top = niceCeil(Math.max(peak, 1));
    return { top, label: (Number.isInteger(top) ? String(top) : top.toFixed(1)) + " %" };
  }

  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

  function bytesText(n) {
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(Math.round(n))) + " " + UNITS[i];
  }

  // the top of the memory scale: a round number of binary units, at least 1 MiB
  function memoryScale(peak) {
    let i = 0;
    let v = Math.max(peak, 1024 * 1024);
    while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
    const top = niceCeil(v);
    return { top: top * Math.pow(1024, i), label: top + " " + UNITS[i] };
  }

  // SVG path data for points in a w×h box (y down) over [t0, t1] and [0, top]: the line, the
  // area under it, and the last point's dot; a run of points ends at a gap
  function paths(points, value, top, box) {
    const { w, h, t0, t1, gap } = box;
    const x = (t) => ((t - t0) / (t1 - t0 || 1) * w).toFixed(1);
    const y = (v) => (h - Math.min(v / top, 1) * (h - 2)).toFixed(1);
    let line = "";
    let area = "";
    let runStart = null;
    let prev = null;
    for (const p of points) {
      const px = x(p.at);
      const py = y(value(p));
      if (prev === null || p.at - prev.at > gap) {
        if (runStart !== null) area += "V" + h + "H" + runStart + "Z";
        line += "M" + px + " " + py;
        area += "M" + px + " " + h + "V" + py;
        runStart = px;
      } else {
        line += "L" + px + " " + py;
        area += "L" + px + " " + py;
      }
      prev = p;
    }
    if (runStart !== null) area += "V" + h + "H" + runStart + "Z";
    const dot = prev ? "M" + x(prev.at) + " " + y(value(prev)) + "l0 0" : "";
    return { line, area, dot };
  }

  return Object.freeze({ Series, sample, niceCeil, cpuText, cpuScale, bytesText, memoryScale,
    paths });
})();
