"""The container images the suite runs, built with podman from Debian packages (no registry here).

    base    `debootstrap --variant=minbase` of bookworm with python3, python3-venv and ca-certificates,
            `podman import`ed as localhost/fepha-base:<key>; the rootfs tarball is cached under
            /var/cache/fepha keyed on its inputs, the image kept in podman's store under the same key.
    fep-ha  the repository's Dockerfile with `--build-arg BASE=<base>` (users build it on python:3.11-slim).
    redis   tests/containers/Dockerfile.redis: the same base with Debian's redis-server (REDIS_IMAGE).

`python -m tests.containers.images` builds all three and prints the figures. Podman must run with runc
and ulimits below the host's on this kind of machine: `configure_podman()` writes containers.conf.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = "python3,python3-venv,ca-certificates"
CACHE = Path(os.environ.get("FEPHA_CACHE", "/var/cache/fepha"))
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
CONF_BLOCK = """# fep-ha: podman on this kind of machine (crun fails on the hybrid cgroup layout; the default
# ulimits exceed the host's and fail with EPERM)
[containers]
default_ulimits = ["nofile=10000:10000", "nproc=10000:10000"]

[engine]
runtime = "runc"
"""
FEP_IMAGE = "localhost/fep-ha:test"
REDIS_IMAGE = "localhost/fepha-redis:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def run(*argv: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, text=True, **kw)  # type: ignore[call-overload]


def missing_tools() -> list[str]:
    return [t for t in ("podman", "debootstrap", "docker-compose", "runc", "ip", "flock") if not shutil.which(t)]


def configure_podman() -> None:
    """containers.conf with runc and the ulimits, unless the machine already has one of its own."""
    if CONTAINERS_CONF.exists() and "fep-ha" in CONTAINERS_CONF.read_text():
        return
    if CONTAINERS_CONF.exists() and CONTAINERS_CONF.read_text().strip():
        raise RuntimeError(f"{CONTAINERS_CONF} exists: add to it yourself:\n{CONF_BLOCK}")
    CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
    CONTAINERS_CONF.write_text(CONF_BLOCK)


def base_key() -> str:
    return hashlib.sha256(f"{SUITE} minbase {INCLUDE} {MIRROR}".encode()).hexdigest()[:12]


def image_exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], check=False).returncode == 0


def base_image() -> str:
    """The local base image, made once per key (rootfs tarball cached across runs and clones)."""
    key = base_key()
    ref = f"localhost/fepha-base:{key}"
    if image_exists(ref):
        return ref
    tar = rootfs_tar()
    run("podman", "import", "--change", "CMD=/bin/bash", str(tar), ref, stdout=subprocess.DEVNULL)
    return ref


def rootfs_tar() -> Path:
    """The debootstrap rootfs as a tarball, cached under $FEPHA_CACHE keyed on its inputs."""
    key = base_key()
    tar = CACHE / f"rootfs-{SUITE}-{key}.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"rootfs-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    run("debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(work), MIRROR,
        stdout=subprocess.DEVNULL)
    (work / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
        f"deb http://deb.debian.org/debian-security {SUITE}-security main\n")
    shutil.rmtree(work / "var/cache/apt/archives", ignore_errors=True)
    (work / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    run("tar", "-C", str(work), "--numeric-owner", "-cf", f"{tar}.part", ".")
    os.replace(f"{tar}.part", tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar


def build(tag: str, dockerfile: Path, base: str, no_cache: bool = False) -> float:
    """`podman build` on the base; the host CA bundle mounted for pip and apt (TLS interception here)."""
    argv = ["podman", "build", "--network", "host", "-t", tag, "-f", str(dockerfile), "--build-arg", f"BASE={base}"]
    if HOST_CA.exists():
        argv += ["--volume", "/etc/ssl/certs:/etc/ssl/certs:ro",
                 "--build-arg", f"PIP_CERT={HOST_CA}"]
    if no_cache:
        argv.append("--no-cache")
    t0 = time.monotonic()
    r = subprocess.run([*argv, str(REPO)], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"podman build {tag} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return time.monotonic() - t0


def image_size(ref: str) -> int:
    out = run("podman", "image", "inspect", "--format", "{{.Size}}", ref, capture_output=True).stdout
    return int(out.strip())


def build_all(no_cache: bool = False) -> dict[str, float | int | str]:
    configure_podman()
    t0 = time.monotonic()
    base = base_image()
    figures: dict[str, float | int | str] = {"base image": base, "base ready s": round(time.monotonic() - t0, 1)}
    figures["fep-ha build s"] = round(build(FEP_IMAGE, REPO / "Dockerfile", base, no_cache), 1)
    figures["redis build s"] = round(build(REDIS_IMAGE, REPO / "tests/containers/Dockerfile.redis", base, no_cache), 1)
    figures["fep-ha image MB"] = round(image_size(FEP_IMAGE) / 1e6, 1)
    figures["redis image MB"] = round(image_size(REDIS_IMAGE) / 1e6, 1)
    return figures


if __name__ == "__main__":
    for k, v in build_all(no_cache="--no-cache" in sys.argv).items():
        print(f"{k}: {v}")
