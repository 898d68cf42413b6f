#!/usr/bin/env bash
# Carry onnxruntime-gpu (and the server's other wheels) to a GPU host that reaches no package index
# and takes files only in pieces of bounded size (an upload limit, a transfer quota).
#
# On a machine with the package index, from a clone of this repository:
#   tools/gpu-bundle.sh prepare [--python 3.12] [--part-size 45M] [--limit 64M] [--extras gpu]
#                               [--host-has torch,numpy,...] [--glibc 2.28] [--out .gpu] [--wheel FILE]
#       writes the git-ignored .gpu/: parts/ (the onnxruntime-gpu wheel split into checksummed
#       parts), deps/ (the wheels the host lacks), gpu-bundle.sh (this script), and prints which
#       files to send together, each delivery under --limit. --python and --glibc describe the
#       host; --host-has names packages it already has; --wheel uses an onnxruntime-gpu wheel at hand.
#
# On the GPU host, in its copy of the repository, after each delivery has arrived:
#   bash .gpu/gpu-bundle.sh stash      # keep what arrived under $GPU_BUNDLE_HOME; says what is missing
# and once every part is there:
#   bash .gpu/gpu-bundle.sh install    # reassemble, verify, pip install offline, check CUDA
#   . "$GPU_BUNDLE_HOME/env"           # PYTHONPATH for python -m server, loadtests/bench, ...
#
# The pieces, usable on their own (and tested by tests/unit/test_gpu_bundle.py):
#   tools/gpu-bundle.sh split FILE DIR [--part-size SIZE]   # DIR/NAME.part-000..., PARTS.sha256, WHOLE.sha256
#   tools/gpu-bundle.sh join DIR DEST                       # verify every part, reassemble, verify the whole
#   tools/gpu-bundle.sh check                               # onnxruntime lists CUDAExecutionProvider
#
# $GPU_BUNDLE_HOME (default /tmp/electra-gpu-bundle) holds parts/, deps/, wheel/, site/ and env on the
# host; $PYTHON (default python3) is the interpreter that pip installs for. Sizes take K, M, G (1024s).
set -euo pipefail

PYTHON=${PYTHON:-python3}
home=${GPU_BUNDLE_HOME:-/tmp/electra-gpu-bundle}
work=""
self="${BASH_SOURCE[0]}"

die() {
    echo "gpu-bundle: $*" >&2
    exit 1
}

bytes() {
    numfmt --from=iec "$1" 2>/dev/null || die "not a size: $1 (e.g. 45M)"
}

# ---------------------------------------------------------------------------------------- split / join

split_file() {
    local file=$1 dir=$2 size=$3 name n
    [ -f "$file" ] || die "split: no such file: $file"
    n=$(bytes "$size")
    name=$(basename "$file")
    mkdir -p "$dir"
    rm -f "$dir/$name".part-* "$dir/PARTS.sha256" "$dir/WHOLE.sha256"
    split --bytes="$n" --numeric-suffixes=0 --suffix-length=3 "$file" "$dir/$name.part-"
    (cd "$dir" && sha256sum -- "$name".part-* >PARTS.sha256)
    (cd "$(dirname "$file")" && sha256sum -- "$name") >"$dir/WHOLE.sha256"
    echo "$name: $(wc -l <"$dir/PARTS.sha256") parts of at most $size in $dir"
}

# The parts a WHOLE.sha256 / PARTS.sha256 pair lists, in order; fails naming the missing ones.
listed_parts() {
    local dir=$1 missing=()
    [ -f "$dir/WHOLE.sha256" ] && [ -f "$dir/PARTS.sha256" ] || die "$dir has no PARTS.sha256 / WHOLE.sha256"
    while read -r _ part; do
        [ -f "$dir/$part" ] || missing+=("$part")
    done <"$dir/PARTS.sha256"
    [ ${#missing[@]} -eq 0 ] || die "missing $(printf '%s ' "${missing[@]}")($(wc -l <"$dir/PARTS.sha256") parts in all)"
    awk '{print $2}' "$dir/PARTS.sha256"
}

join_parts() {
    local dir=$1 dest=$2 name digest tmp list parts
    list=$(listed_parts "$dir")
    read -r digest name <"$dir/WHOLE.sha256" || die "join: $dir/WHOLE.sha256 is empty"
    mapfile -t parts <<<"$list"
    (cd "$dir" && sha256sum --check --quiet PARTS.sha256) || die "join: a part of $name is damaged: send it again"
    mkdir -p "$dest"
    tmp=$(mktemp "$dest/.$name.XXXXXX")
    (cd "$dir" && cat -- "${parts[@]}") >"$tmp"
    if [ "$(sha256sum <"$tmp" | awk '{print $1}')" != "$digest" ]; then
        rm -f "$tmp"
        die "join: $name does not match its sha256 once reassembled"
    fi
    mv "$tmp" "$dest/$name"
    echo "$dest/$name"
}

# ---------------------------------------------------------------------------------------- prepare

platform_args() {
    # Every manylinux tag a host with glibc $1 runs, newest first.
    local minor=${1#2.} m
    for ((m = minor; m >= 17; m--)); do
        printf -- '--platform\nmanylinux_2_%s_x86_64\n' "$m"
    done
    printf -- '--platform\nmanylinux2014_x86_64\n'
}

prepare() {
    local python_version part_size=45M limit=64M extras=gpu host_has="" glibc=2.28 out="" wheel=""
    python_version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || die "prepare: $1 needs a value"
        case $1 in
            --python) python_version=$2 ;;
            --part-size) part_size=$2 ;;
            --limit) limit=$2 ;;
            --extras) extras=$2 ;;
            --host-has) host_has=$2 ;;
            --glibc) glibc=$2 ;;
            --out) out=$2 ;;
            --wheel) wheel=$(realpath "$2") ;;
            *) die "prepare: unknown option $1" ;;
        esac
        shift 2
    done
    local root
    root=$(cd "$(dirname "$self")/.." && pwd)
    [ -f "$root/pyproject.toml" ] || die "prepare runs from a clone of electra-serve (no pyproject.toml in $root)"
    out=${out:-$root/.gpu}
    local part_bytes limit_bytes
    part_bytes=$(bytes "$part_size")
    limit_bytes=$(bytes "$limit")
    [ "$part_bytes" -lt "$limit_bytes" ] || die "--part-size must be below --limit"
    mapfile -t plat < <(platform_args "$glibc")
    local pick=(--only-binary=:all: --implementation cp --python-version "$python_version" "${plat[@]}")

    if [ -e "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -f "$out/gpu-bundle.sh" ] && [ ! -d "$out/parts" ]; then
        die "prepare: $out holds something else than a bundle: choose another --out"
    fi
    rm -rf "$out" && mkdir -p "$out/parts" "$out/deps"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT

    # onnxruntime-gpu, as the gpu extra pins it, split into parts.
    if [ -z "$wheel" ]; then
        local requirement
        requirement=$("$PYTHON" - "$root/pyproject.toml" <<'PY'
import re, sys, tomllib
extra = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"].get("gpu", [])
print(next((re.sub(r"\s+", "", r) for r in extra if re.match(r"onnxruntime[-_]gpu", r, re.I)), "onnxruntime-gpu"))
PY
)
        echo "gpu-bundle: downloading $requirement for CPython $python_version, glibc >= $glibc"
        "$PYTHON" -m pip download -q --no-deps "${pick[@]}" -d "$work/ort" "$requirement"
        wheel=$(ls "$work"/ort/*.whl)
    fi
    [ -f "$wheel" ] || die "prepare: no such wheel: $wheel"
    split_file "$wheel" "$out/parts" "$part_size"

    # Everything else the extras need, resolved for the host, less what it already has.
    "$PYTHON" -m pip install -q --dry-run --ignore-installed --report "$work/report.json" "${pick[@]}" \
        --target "$work/target" "$root[$extras]"
    "$PYTHON" - "$work/report.json" "$host_has" >"$work/need.txt" <<'PY'
import json, re, sys

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

skip = {canonical(n) for n in sys.argv[2].split(",") if n.strip()} | {"onnxruntime-gpu", "onnxruntime"}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    name = canonical(meta["name"])
    # The project itself travels as the clone; CUDA's own wheels are the host's (or torch's).
    if item.get("is_direct") or name in skip or name.startswith(("nvidia-", "cuda-")):
        continue
    print(f"{meta['name']}=={meta['version']}")
PY
    if [ -s "$work/need.txt" ]; then
        "$PYTHON" -m pip download -q --no-deps "${pick[@]}" -d "$out/deps" -r "$work/need.txt"
    fi
    local big
    big=$(find "$out/deps" -name '*.whl' -size +"$((part_bytes / 1024))"k)
    [ -z "$big" ] || die "dependency wheels larger than a part: $big (the host may have them: --host-has)"
    cp "$self" "$out/gpu-bundle.sh"
    plan "$out" "$limit"
}

plan() {
    # Deliveries of at most $2 bytes each: every one carries the script and the checksums (so that
    # stash can say what is missing), then the parts in order, then the dependency wheels.
    local out=$1 limit carried=0 n=1 file size base
    limit=$(bytes "$2")
    local always=("$out/gpu-bundle.sh" "$out/parts/PARTS.sha256" "$out/parts/WHOLE.sha256")
    base=$(cat "${always[@]}" | wc -c)
    echo "gpu-bundle: $(du -sh "$out" | cut -f1) in $out; send, each delivery into the host's copy of the repository:"
    local line="  1: ${always[*]#"$out"/}"
    carried=$base
    for file in "$out"/parts/*.part-* "$out"/deps/*.whl; do
        [ -f "$file" ] || continue
        size=$(stat -c %s "$file")
        if [ $((carried + size)) -gt "$limit" ]; then
            echo "$line"
            echo "     then on the host: bash .gpu/gpu-bundle.sh stash"
            n=$((n + 1))
            line="  $n: ${always[*]#"$out"/}"
            carried=$base
        fi
        line="$line ${file#"$out"/}"
        carried=$((carried + size))
    done
    echo "$line"
    echo "     then on the host: bash .gpu/gpu-bundle.sh install && . $home/env"
    echo "  (paths relative to $out; on the host they go under .gpu/)"
}

# ---------------------------------------------------------------------------------------- on the host

stash() {
    # Copy what arrived in the bundle folder to $home, where earlier deliveries wait.
    local bundle=${1:-.gpu} have total
    [ -d "$bundle" ] || die "stash: no bundle folder $bundle"
    mkdir -p "$home/parts" "$home/deps"
    if compgen -G "$bundle/parts/*" >/dev/null; then cp -f "$bundle"/parts/* "$home/parts/"; fi
    if compgen -G "$bundle/deps/*.whl" >/dev/null; then cp -f "$bundle"/deps/*.whl "$home/deps/"; fi
    [ -f "$home/parts/PARTS.sha256" ] || die "stash: no PARTS.sha256 has arrived yet"
    (cd "$home/parts" && sha256sum --check --quiet --ignore-missing PARTS.sha256) ||
        die "stash: a part is damaged: send it again"
    total=$(wc -l <"$home/parts/PARTS.sha256")
    have=0
    while read -r _ part; do
        [ -f "$home/parts/$part" ] && have=$((have + 1))
    done <"$home/parts/PARTS.sha256"
    echo "gpu-bundle: $have of $total parts and $(find "$home/deps" -name '*.whl' | wc -l) dependency wheels in $home"
}

install_bundle() {
    local bundle=.gpu run_check=1 wheel
    while [ $# -gt 0 ]; do
        case $1 in
            --no-check) run_check=0 ;;
            *) bundle=$1 ;;
        esac
        shift
    done
    if [ -d "$bundle" ]; then stash "$bundle"; fi
    wheel=$(join_parts "$home/parts" "$home/wheel")
    local deps=()
    mapfile -t deps < <(find "$home/deps" -name '*.whl' 2>/dev/null | sort)
    # --target: nothing of the host's Python is touched; --no-index: no registry is asked.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$home/site" \
        "$wheel" "${deps[@]}"
    cat >"$home/env" <<EOF
export PYTHONPATH="$home/site:$PWD\${PYTHONPATH:+:\$PYTHONPATH}"
export PATH="$home/site/bin:\$PATH"
EOF
    echo "gpu-bundle: installed into $home/site; . $home/env before running the server"
    if [ $run_check -eq 1 ]; then
        # shellcheck disable=SC1091
        . "$home/env"
        check
    fi
}

check() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    # onnxruntime-gpu loads CUDA and cuDNN when a session is created; preload_dlls() finds those
    # installed as nvidia-* wheels (beside torch, for instance). A provider that is only available,
    # not active, is not proof: the server and loadtests/bench check session.get_providers() too.
    "$PYTHON" - <<'PY'
import sys
import onnxruntime as ort

if hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()
    except Exception as exc:  # the check below says what matters
        print(f"preload_dlls: {exc}", file=sys.stderr)
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    sys.exit("gpu-bundle: CUDAExecutionProvider is not available: this onnxruntime would run on the CPU")
PY
}

usage() {
    sed -n '2,/^set -euo/p' "$self" | sed '$d' | sed 's/^# \{0,1\}//'
}

command=${1:-}
[ $# -gt 0 ] && shift
case $command in
    prepare) prepare "$@" ;;
    split)
        [ $# -ge 2 ] || die "usage: split FILE DIR [--part-size SIZE]"
        size=45M
        if [ "${3:-}" = --part-size ]; then size=${4:?--part-size needs a value}; fi
        split_file "$1" "$2" "$size"
        ;;
    join)
        [ $# -eq 2 ] || die "usage: join DIR DEST"
        join_parts "$1" "$2"
        ;;
    stash) stash "$@" ;;
    install) install_bundle "$@" ;;
    check) check ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
