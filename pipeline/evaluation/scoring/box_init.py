"""First process of the code sandbox (`python -I box_init.py`, its payload as JSON on stdin).

With `isolate` it runs as root of fresh user, pid, network, mount, IPC and UTS namespaces (started
by `unshare`, see sandbox.py) and, before any candidate code exists in the box:
  - hides /tmp and the home folders (API keys, tokens, the store, other runs) under empty tmpfs,
    binding back only the Python installation the candidate needs;
  - mounts a small private tmpfs as the box and makes every other mount read-only;
then, in every mode: sets the resource limits, writes the box's files, hands the nonce over on a
pipe (fd 4), moves the verdict pipe to fd 3, and execs the driver with no capabilities and
no_new_privs (setpriv), in a clean environment. Any step that fails stops the run: no sandbox, no run.
"""
import ctypes
import fcntl
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
# per-mount options a remount must repeat: a user namespace may add restrictions, never drop one
KEPT_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
BOX = "/tmp/box"

libc = ctypes.CDLL(None, use_errno=True)


def _bytes(value):
    return value.encode() if isinstance(value, str) else value


def mount(source, target, fstype, flags, data=None) -> None:
    if libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {target}: {os.strerror(error)}")


def mounts() -> list[tuple[str, int]]:
    """(mount point, flags to keep) of every mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 and friends
            flags = sum(KEPT_OPTIONS.get(option, 0) for option in fields[5].split(","))
            found.append((point, flags))
    return found


def isolate(box_mb: int, hide: list[str], keep: list[str]) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host's mounts
    held = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in keep]  # reachable after hiding
    for folder in ("/tmp", *hide):
        mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, fd in zip(keep, held):
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    os.makedirs(BOX)
    mount("tmpfs", BOX, "tmpfs", MS_NOSUID | MS_NODEV, f"size={box_mb}m,mode=0777")
    for point, flags in mounts():
        if point != BOX:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    writable = [point for point, _ in mounts() if point != BOX and not os.statvfs(point).f_flag & os.ST_RDONLY]
    if writable:
        raise OSError(f"still writable after the read-only remount: {', '.join(writable)}")


def limit(memory_mb: int, cpu_s: int, file_mb: int, pids: int | None) -> None:
    memory = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if pids is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))


def place(fds: dict[int, int]) -> None:
    """Give each fd its target number, inherited by the driver: all copied high first, so no move
    clobbers an fd another one still needs."""
    high = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for target, fd in fds.items()}
    for fd in fds.values():
        os.close(fd)
    for target, copy in high.items():
        os.dup2(copy, target)  # dup2 makes the target inheritable
        os.close(copy)


def main() -> None:
    payload = json.load(sys.stdin)
    if payload["isolate"]:
        isolate(payload["box_mb"], payload["hide"], payload["keep"])
        folder = BOX
    else:
        folder = payload["folder"]
    for name, text in payload["files"].items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    os.chdir(folder)
    read, write = os.pipe()
    os.write(write, payload["nonce"].encode())
    os.close(write)
    place({3: payload["verdict_fd"], 4: read})
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    limit(payload["memory_mb"], payload["cpu_s"], payload["file_mb"], payload["pids"])
    command = [payload["python"], "-I", "-X", "utf8", "driver.py"]
    if payload["isolate"]:
        command = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--", *command]
    env = {**payload["env"], "HOME": folder, "TMPDIR": folder}
    os.execvpe(command[0], command, env)  # fds 0-4 stay; every other one is close-on-exec


main()
