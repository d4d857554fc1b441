"""The sandbox's root filesystem: read-only binds of the system and the base interpreter, then chroot.

Runs as root inside fresh mount + pid namespaces, before the fork server starts serving. The project
tree, ``/root``, ``/home``, host ``/tmp`` and the shared data are simply not in the new root.
Standard library only: part of the fork server's source (``worker.py``).
"""

import os

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
NEW_ROOT = "/tmp/.sandbox-root"  # on a tmpfs that only this mount namespace sees


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {target}: {os.strerror(err)}")


def _bind_ro(libc, path, root):
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    elif os.path.exists(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    else:
        return
    flags = MS_BIND | MS_NOSUID
    _mount(libc, path, target, None, flags)
    _mount(libc, None, target, None, flags | MS_REMOUNT | MS_RDONLY)


def setup_root(cfg):
    """Build the read-only root described in the module docstring and chroot into it."""
    libc = _libc()
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "sandbox", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    root = NEW_ROOT
    os.makedirs(root)
    _mount(libc, "sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    for path in cfg["ro_paths"]:
        _bind_ro(libc, path, root)
    os.makedirs(root + "/dev")
    for dev in ("null", "zero", "random", "urandom", "full"):
        open(f"{root}/dev/{dev}", "a").close()
        _mount(libc, f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND | MS_NOSUID)
    os.makedirs(root + "/proc")
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    os.makedirs(root + "/tmp")
    _mount(libc, "work", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_mb']}m,mode=755")
    _mount(libc, None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    os.chroot(root)
    os.chdir("/")
