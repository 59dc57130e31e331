"""docker installs: `docker pull <image>` unless `docker image inspect` finds it already."""

from __future__ import annotations

import re

import trio

from manman.worker.console.lines import LineFramer
from manman.worker.installers.base import InstallContext, InstallError
from manman.worker.runners.docker import DockerCLI

_LAYER_RE = re.compile(r"^([0-9a-f]{12}): (.+)$")


class PullProgress:
    """Layers seen vs layers done, from `docker pull` output without a terminal (pure)."""

    def __init__(self) -> None:
        self.layers: set[str] = set()
        self.done: set[str] = set()
        self.progress = 0.0

    def feed(self, line: str) -> float | None:
        m = _LAYER_RE.match(line.strip())
        if m is None:
            return None
        layer, status = m.groups()
        self.layers.add(layer)
        if status.startswith(("Pull complete", "Already exists")):
            self.done.add(layer)
        value = round(99.0 * len(self.done) / len(self.layers), 2)
        if value > self.progress:
            self.progress = value
            return value
        return None


class DockerPull:
    needed = True

    def __init__(self, cli: DockerCLI, timeout: float) -> None:
        self.cli = cli  # the runner's: the same docker, environment and helper tag
        self.timeout = timeout

    async def install(self, ctx: InstallContext) -> None:
        image = ctx.spec.install_identifier
        ctx.files_dir.mkdir(parents=True, exist_ok=True)
        # a daemon that hangs is a failed install, not one that never ends
        inspect_rc, out, err = await self.cli.run("image", "inspect", "--format", "{{.Id}}",
                                                  image, timeout=min(self.timeout, 60))
        if inspect_rc in (124, 127):  # timed out, or docker cannot run: err says which
            raise InstallError(err)
        if inspect_rc == 0:
            ctx.publish([f"image {image} is present ({out.strip()[:19]})"])
            return
        ctx.publish([f"docker pull {image}"])
        try:
            proc = await self.cli.open("pull", image, merge_stderr=True)
        except OSError as e:
            raise InstallError(f"cannot run docker ({self.cli.docker}): {e.strerror or e}") \
                from None
        framer, progress, last = LineFramer(cr_breaks=True), PullProgress(), ""
        code: int | None = None
        try:
            with trio.move_on_after(self.timeout) as scope:
                assert proc.stdout is not None
                while data := await proc.stdout.receive_some(65536):
                    lines = [ln for ln in framer.feed(data) if ln.strip()]
                    for line in lines:
                        if (p := progress.feed(line)) is not None:
                            ctx.progress(p)
                    if lines:
                        ctx.publish(lines)
                        last = lines[-1]
                code = await proc.wait()
        finally:
            if code is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        if scope.cancelled_caught:
            raise InstallError(f"docker pull timed out after {self.timeout:g}s")
        if code != 0:
            raise InstallError(last.strip() or f"docker pull exited with code {code}")
