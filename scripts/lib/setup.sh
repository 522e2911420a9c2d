# Sourced by scripts/demo and scripts/test: makes sure this machine has what the NAT lab and the
# tests need, installing what is missing with the system's package manager, and saying what and
# why. On a system it cannot handle, it stops with the exact command to run.

# command  package    what for
lab_tools=(
  "nft       nftables   NAT rules on the lab's routers"
  "iptables  iptables   the lab's one-way delay (NFQUEUE)"
  "conntrack conntrack  flushing NAT mappings between lab runs"
  "ip        iproute2   the lab's links and routes"
  "miniupnpd miniupnpd-nftables  the UPnP router of the lab's port-mapping cells"
  "python3   python3    the echo server of the end-to-end test and the README's demo"
)

# Only the tests need these (scripts/test adds them).
test_tools=(
  "node      nodejs     the stock js-libp2p peer of the interop tests (Node.js 20.19 or later)"
  "npm       npm        installing js-libp2p for that peer, from the npm registry"
  "systemd-analyze systemd checking packaging/punchgate.service"
)

# Finds a command on PATH or in the sbin directories a non-root PATH often lacks.
have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install Rust 1.85 or newer (https://rustup.rs), then run $0 again." >&2
    exit 1
  fi
}

ensure_lab_tools() {
  # The lab runs the tools from PATH, and Debian keeps them in /usr/sbin, which a non-root PATH
  # often lacks.
  case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin:/sbin" ;; esac
  local missing=() why=() entry tool package what
  for entry in "${lab_tools[@]}"; do
    read -r tool package what <<<"$entry"
    if ! have "$tool"; then
      missing+=("$package")
      why+=("  $package: \`$tool\`, for $what")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0

  echo "Installing what the tests need and this machine lacks:"
  printf '%s\n' "${why[@]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "Not root and no sudo: as root, run: apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" \
      || { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${missing[@]}"; } \
      || { echo "Installing failed: run \`sudo apt-get update && sudo apt-get install -y ${missing[*]}\` and try again." >&2; exit 1; }
  else
    echo "This system has no apt-get: install the packages that provide ${missing[*]} with its package manager (Fedora: sudo dnf install -y nftables iptables conntrack-tools iproute python3 miniupnpd nodejs npm systemd), then run $0 again." >&2
    exit 1
  fi
}
