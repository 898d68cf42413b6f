#!/usr/bin/env bash
# Triton's perf_analyzer, as this project's KServe v2 benchmarks and tests run it.
#
#   tools/perf-analyzer.sh --install           # once: fetch it (PyPI, and Debian's archive if needed)
#   tools/perf-analyzer.sh -m demo-classify -i grpc -u 127.0.0.1:8001 --input-data data.json ...
#
# The perf-analyzer wheel (the real client, not PyPI's empty 0.1.0 placeholder that a plain
# `pip install perf-analyzer` picks on older systems) is built for glibc >= 2.38; Debian 12 has 2.36.
# Where the system's glibc is too old, --install also unpacks Debian 13's loader, libc and libstdc++
# into the same folder, and the binary runs under that loader; nothing is installed system-wide.
# Everything lives in $ELECTRA_PERF_ANALYZER_HOME (default ~/.cache/electra-serve/perf-analyzer).
set -euo pipefail
version=${PERF_ANALYZER_VERSION:-2.60.0}
home=${ELECTRA_PERF_ANALYZER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/electra-serve/perf-analyzer}
binary="$home/$version/perf_analyzer/bin/perf_analyzer"
libs="$home/glibc/usr/lib/x86_64-linux-gnu"
needed_glibc=2.38

glibc_too_old() {
    local have
    have=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
    [ "$(printf '%s\n%s\n' "$have" "$needed_glibc" | sort -V | head -1)" != "$needed_glibc" ]
}

debian_mirror() {
    # The mirror this host's apt uses (deb822 or one-line sources), else Debian's own.
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

install() {
    if [ ! -x "$binary" ]; then
        local wheels
        wheels=$(mktemp -d)
        python3 -m pip download -q --no-deps --only-binary=:all: --platform "manylinux_${needed_glibc/./_}_x86_64" \
            --python-version 3.11 -d "$wheels" "perf-analyzer==$version"
        mkdir -p "$home/$version"
        python3 -m zipfile -e "$wheels"/perf_analyzer-*.whl "$home/$version"
        chmod +x "$binary"
        rm -rf "$wheels"
    fi
    if glibc_too_old && [ ! -x "$libs/ld-linux-x86-64.so.2" ]; then
        # apt with a private state folder: downloads only, the host's packages are untouched.
        local state
        state=$(mktemp -d)
        chmod 755 "$state"  # apt downloads as its own user, _apt
        mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/debs"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) trixie main" \
            >"$state/sources.list"
        local apt=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state")
        apt-get "${apt[@]}" update -q >/dev/null
        (cd "$state/debs" && apt-get "${apt[@]}" download libc6 libstdc++6 libgcc-s1 >/dev/null)
        mkdir -p "$home/glibc"
        for deb in "$state"/debs/*.deb; do dpkg -x "$deb" "$home/glibc"; done
        rm -rf "$state"
    fi
    run --version
}

run() {
    if [ ! -x "$binary" ]; then
        echo "perf_analyzer is not installed: run $0 --install (needs PyPI and Debian's archive, about a minute)" >&2
        exit 127
    fi
    if glibc_too_old; then
        exec "$libs/ld-linux-x86-64.so.2" --library-path "$libs:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
            "$binary" "$@"
    fi
    exec "$binary" "$@"
}

case "${1:-}" in
    --install) install ;;
    --installed) [ -x "$binary" ] ;;
    *) run "$@" ;;
esac
