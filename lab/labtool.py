"""Small stdlib-only helpers of the dfir.vmcollect test lab.

Run as `/usr/bin/python3 lab/labtool.py ...` (Debian's python, not root's pyenv shim):

  labtool.py modorder MODDIR NAME...      load order of kernel modules (deps first), one per line
  labtool.py cpio ROOT OUT                deterministic newc cpio of ROOT (+ /dev/console)
  labtool.py blob OUT SIZE SEED           deterministic pseudo-random file (sha256 counter stream)
  labtool.py labjson OUT KEY=VALUE...     write lab.json (see up.sh for the keys)
"""
import hashlib
import json
import lzma
import os
import stat
import sys


def _read_module(path):
    data = open(path, "rb").read()
    if path.endswith(".xz"):
        data = lzma.decompress(data)
    return data


def _find_modules(moddir):
    found = {}
    for d, _subdirs, files in os.walk(moddir):
        for f in files:
            for ext in (".ko", ".ko.xz"):
                if f.endswith(ext):
                    found[f[: -len(ext)].replace("-", "_")] = os.path.join(d, f)
    return found


def modorder(moddir, names):
    mods = _find_modules(moddir)
    builtin = set()
    bfile = os.path.join(moddir, "modules.builtin")
    if os.path.exists(bfile):
        for line in open(bfile):
            builtin.add(os.path.basename(line.strip()).split(".")[0].replace("-", "_"))
    order, seen = [], set()

    def visit(name, chain):
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise SystemExit("module dependency loop: %s" % " -> ".join(chain + [name]))
        if name not in mods:
            raise SystemExit("module %s not found under %s (and not built in)" % (name, moddir))
        data = _read_module(mods[name])
        deps = []
        for part in data.split(b"\0"):
            if part.startswith(b"depends="):
                deps = [x for x in part[8:].decode().split(",") if x]
        for dep in deps:
            visit(dep, chain + [name])
        seen.add(name)
        order.append((name, mods[name]))

    for n in names:
        visit(n, [])
    for name, path in order:
        print("%s %s" % (name, path))


def cpio(root, out):
    """newc cpio with fixed mtime/uid/gid/inode numbers, sorted entries (GNU/busybox cpio embed
    host inode numbers and timestamps)."""
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))
    entries = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for n in sorted(dirs + files):
            entries.append(os.path.relpath(os.path.join(d, n), root))
    entries.sort()
    ino = [100]

    def pad(b):
        return b"\0" * ((4 - len(b) % 4) % 4)

    def hdr(name, mode, size, rmaj=0, rmin=0, nlink=1):
        ino[0] += 1
        nb = name.encode() + b"\0"
        fields = (ino[0], mode, 0, 0, nlink, mtime, size, 0, 0, rmaj, rmin, len(nb), 0)
        b = ("070701" + "".join("%08X" % v for v in fields)).encode() + nb
        return b + pad(b)

    with open(out, "wb") as f:
        for rel in entries:
            p = os.path.join(root, rel)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                f.write(hdr(rel, stat.S_IFDIR | 0o755, 0, nlink=2))
            elif stat.S_ISLNK(st.st_mode):
                t = os.readlink(p).encode()
                f.write(hdr(rel, stat.S_IFLNK | 0o777, len(t)) + t + pad(t))
            else:
                data = open(p, "rb").read()
                f.write(hdr(rel, stat.S_IFREG | stat.S_IMODE(st.st_mode), len(data)) + data + pad(data))
        f.write(hdr("dev/console", stat.S_IFCHR | 0o600, 0, 5, 1))
        f.write(hdr("TRAILER!!!", 0, 0, nlink=1))


def blob(out, size, seed):
    size = int(size)
    with open(out, "wb") as f:
        i = 0
        left = size
        while left > 0:
            chunk = hashlib.sha256(("%s:%d" % (seed, i)).encode()).digest()
            f.write(chunk[:left])
            left -= len(chunk)
            i += 1


def _typed(v):
    if v in ("true", "false"):
        return v == "true"
    try:
        return int(v)
    except ValueError:
        return v


def labjson(out, pairs):
    """KEY=VALUE pairs; dotted keys make nested objects, 'hosts.0.name' makes lists."""
    doc = {}
    for pair in pairs:
        key, _sep, val = pair.partition("=")
        parts = key.split(".")
        cur = doc
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            nxt_is_index = not last and parts[i + 1].isdigit()
            if isinstance(cur, list):
                idx = int(p)
                while len(cur) <= idx:
                    cur.append(None)
                if last:
                    cur[idx] = _typed(val)
                else:
                    if cur[idx] is None:
                        cur[idx] = [] if nxt_is_index else {}
                    cur = cur[idx]
            else:
                if last:
                    cur[p] = _typed(val)
                else:
                    cur = cur.setdefault(p, [] if nxt_is_index else {})
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, out)


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd = argv[1]
    if cmd == "modorder" and len(argv) >= 4:
        modorder(argv[2], argv[3:])
    elif cmd == "cpio" and len(argv) == 4:
        cpio(argv[2], argv[3])
    elif cmd == "blob" and len(argv) == 5:
        blob(argv[2], argv[3], argv[4])
    elif cmd == "labjson" and len(argv) >= 3:
        labjson(argv[2], argv[3:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
