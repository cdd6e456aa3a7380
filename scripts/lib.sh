# Helpers shared by zeroblk's scripts: install what is missing, say what runs.
# Sourced, not run.

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# need_apt PACKAGE... : installs the Debian packages that are not installed yet.
need_apt() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# need_pip COMMAND SPEC : installs a PyPI package when COMMAND is not on PATH.
need_pip() {
    if ! command -v "$1" >/dev/null 2>&1; then
        say "installing $2 from PyPI"
        python3 -m pip install --quiet "$2"
    fi
}

# need_pip_module MODULE SPEC : installs a PyPI package when python3 cannot
# import MODULE.
need_pip_module() {
    if ! python3 -c "import $1" >/dev/null 2>&1; then
        say "installing $2 from PyPI"
        python3 -m pip install --quiet "$2"
    fi
}

# need_qemu : QEMU's system emulator and its utilities (qemu-img, qemu-nbd),
# at one version. Some machine images come with a newer qemu-utils from
# backports than the archive's qemu-system-x86, which breaks it: installing
# the emulator alone would then remove qemu-img. Take both at the
# emulator's version instead.
need_qemu() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v qemu-img >/dev/null 2>&1 && return
    local version
    as_root apt-get update -qq
    version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
    [ -n "$version" ] && [ "$version" != "(none)" ] \
        || { echo "apt has no qemu-system-x86: add Debian's main archive to the apt sources" >&2; exit 1; }
    say "installing qemu-system-x86 and qemu-utils $version"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades \
        qemu-system-x86 "qemu-utils=$version" >/dev/null
}

# need_crate COMMAND CRATE VERSION : installs a crate's program from
# crates.io when COMMAND is not on PATH.
need_crate() {
    if ! command -v "$1" >/dev/null 2>&1; then
        say "installing $2 $3 from crates.io (cargo install; this takes a while)"
        cargo install --quiet --locked "$2" --version "$3"
    fi
}

# need_cargo : makes sure cargo is on PATH.
need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
}
