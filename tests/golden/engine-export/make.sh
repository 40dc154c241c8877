#!/bin/bash
# Makes the two engine exports the golden-digest test canonicalises (docker.tar.gz,
# podman.tar.gz). Run once, by hand, when the fixture itself has to change; the test
# checks the committed files, not a fresh build. Both engines build the same
# Containerfile, so both exports must give the one committed canonical digest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tag=imagesmith-golden-export:$$
mkdir -p "$work/app/data"
python3 - "$work/base.tar" <<'PY'
import io, sys, tarfile
def add(tar, name, kind="file", data=b"", mode=0o644, link=""):
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uname, info.gname = 1_600_000_000, mode, "root", "root"
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, link
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, link
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
with tarfile.open(sys.argv[1], "w", format=tarfile.GNU_FORMAT) as tar:
    add(tar, "etc", "dir", mode=0o755)
    add(tar, "etc/os-release", data=b'NAME="golden"\nID=golden\n')
    add(tar, "bin", "dir", mode=0o755)
    add(tar, "bin/hello", data=b"#!/bin/hello\n", mode=0o755)
    add(tar, "bin/hi", "hardlink", link="bin/hello")
    add(tar, "usr", "dir", mode=0o755)
    add(tar, "usr/bin", "symlink", link="../bin")
    add(tar, "tmp", "dir", mode=0o1777)
PY
printf 'print("hello")\n' > "$work/app/main.py"
chmod 755 "$work/app/main.py"
printf 'a,b\n1,2\n' > "$work/app/data/table.csv"
ln -s main.py "$work/app/run"
cat > "$work/Containerfile" <<'CF'
FROM scratch
ADD base.tar /
COPY app/ /opt/app/
ENV GREETING="hello world" LANG=C.UTF-8
WORKDIR /opt/app
USER 10001:10001
LABEL dev.imagesmith.example="golden"
CMD ["/opt/app/main.py"]
CF
docker build -q -f "$work/Containerfile" -t "$tag" "$work"
docker save "$tag" | gzip -9n > "$here/docker.tar.gz"
docker rmi "$tag" >/dev/null
podman build -q --format docker -f "$work/Containerfile" -t "$tag" "$work"
podman save -q --format docker-archive "$tag" -o "$work/podman.tar"
gzip -9n < "$work/podman.tar" > "$here/podman.tar.gz"
podman rmi "$tag" >/dev/null
