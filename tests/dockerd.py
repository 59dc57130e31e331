"""A dockerd of our own in a temporary directory, with a busybox image imported from the
local disk (no registry is reachable): for the docker tests and bench/start_time.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DockerUnavailable(Exception):
    """dockerd cannot run on this machine; the message says why."""


@contextmanager
def running_dockerd(image: str) -> Iterator[str]:
    """Start dockerd, import `image`, yield its DOCKER_HOST; stop it all afterwards."""
    missing = [b for b in ("dockerd", "docker") if shutil.which(b) is None]
    if missing:
        raise DockerUnavailable(f"docker tests need {' and '.join(missing)} "
                                "(Debian: docker.io)")
    if os.geteuid() != 0:
        raise DockerUnavailable("docker tests need root to run dockerd")
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        raise DockerUnavailable("docker tests need busybox (Debian: busybox-static)")
    d = Path(tempfile.mkdtemp(prefix="mmd", dir="/tmp"))  # unix socket paths must be short
    host = f"unix://{d / 'docker.sock'}"
    env = {**os.environ, "DOCKER_HOST": host}
    log = (d / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(d / "root"), "--exec-root", str(d / "exec"), "-H", host,
         "--pidfile", str(d / "dockerd.pid"), "--iptables=false", "--bridge=none"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["docker", "version"], env=env, capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (d / "dockerd.log").read_text(errors="replace").strip()[-300:]
                raise DockerUnavailable(f"dockerd could not start here: {tail}")
            time.sleep(0.2)
        rootfs = d / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(busybox, rootfs / "bin" / "busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout
        for applet in applets.split():
            if applet != "busybox":  # relative links: they must work inside the container
                (rootfs / "bin" / applet).symlink_to("busybox")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(d / "rootfs.tar"), "."], check=True)
        subprocess.run(["docker", "import", "--change", "ENV PATH=/bin", str(d / "rootfs.tar"),
                        image], env=env, check=True, capture_output=True)
        yield host
    finally:
        subprocess.run("docker ps -aq | xargs -r docker rm -f", shell=True, env=env,
                       capture_output=True)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)
