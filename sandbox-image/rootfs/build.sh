#!/usr/bin/env bash
# Builds the sandbox's root file system: Debian 13 ("trixie"), minbase, plus the packages of
# packages.txt beside this script, by debootstrap. The same script on every host (scripts/setup.sh)
# and in the container image (sandbox-image/Dockerfile, stage rootfs-build).
#
#   bash sandbox-image/rootfs/build.sh            build if needed; print the root's path on stdout
#   bash sandbox-image/rootfs/build.sh --path     print where the root for this list lives; build nothing
#   bash sandbox-image/rootfs/build.sh --rebuild  throw the cached root for this list away and build it again
#   bash sandbox-image/rootfs/build.sh --check-manifest FILE
#                                                 build if needed, then fail unless the root's
#                                                 packages and versions equal FILE (the committed lock)
#
# Cache layout ($PYEXEC_ROOTFS_CACHE, default /var/cache/pyexec-rootfs; outside the repository):
#   <key>/root/          the root file system, root-owned, nothing in it writable by other users
#   <key>/manifest.txt   `dpkg-query -W -f '${Package} ${Version}\n'` of the root, sorted (C locale)
#   <key>/packages.txt   the normalized package list it was built from
#   <key>/build-info     suite, mirror, debootstrap version, date and build time
#   <key>/purge.log      what dpkg said when the GUI packages were purged (see below)
#   current -> <key>     the root most recently built or found here: <cache>/current/root is the
#                        stable path for the service (its SANDBOX_ROOTFS setting)
#   .build-<key>-<pid>/  a build in progress; renamed to <key> only when complete, so an interrupted
#                        build is never used (and is removed by the next build)
# <key> is a hash of the normalized package list (comments and order do not count), the suite and
# this script's commands (its comment lines do not count), so the root is rebuilt only when one of
# them changes. The three roots used most
# recently are kept; a build removes older ones.
#
# Progress and messages go to stderr; stdout carries only the root's path.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=trixie
mirror="${PYEXEC_ROOTFS_MIRROR:-http://deb.debian.org/debian}"
cache="${PYEXEC_ROOTFS_CACHE:-/var/cache/pyexec-rootfs}"

action=build
manifest_file=
case "${1:-}" in
  "") ;;
  --path) action=path ;;
  --rebuild) action=rebuild ;;
  --check-manifest)
    action=check
    manifest_file="${2:?--check-manifest needs the committed manifest file}"
    ;;
  *)
    echo "rootfs: unknown option $1 (expected --path, --rebuild or --check-manifest FILE)" >&2
    exit 2
    ;;
esac

say() { echo "rootfs: $*" >&2; }

packages=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$here/packages.txt" | LC_ALL=C sort -u)
key=$({
  echo "suite=$suite"
  echo "$packages"
  grep -v '^[[:space:]]*#' "$here/build.sh"
} | sha256sum | cut -c1-16)
entry="$cache/$key"

if [ "$action" = path ]; then
  echo "$entry/root"
  exit 0
fi

# Points <cache>/current at this list's root, atomically (a reader never sees it missing).
point_current() {
  ln -sfn "$key" "$cache/.current.$$"
  mv -T "$cache/.current.$$" "$cache/current"
}

# Compares the root's package list with the committed lock; prints the difference.
check_manifest() {
  if diff -u --label "committed $manifest_file" --label "built $entry/manifest.txt" "$manifest_file" "$entry/manifest.txt" >&2; then
    say "the root's packages equal $manifest_file"
  else
    say "the root's packages differ from $manifest_file (lines with - are committed, + are built)."
    say "If Debian moved on (a point release) or packages.txt changed: copy $entry/manifest.txt to"
    say "$manifest_file, run the tests, and commit it; the difference shows in review."
    exit 1
  fi
}

# Every mount point at or under $1, deepest first (debootstrap mounts /proc, /sys and, in some
# containers, /dev inside its target; an interrupted build can leave them behind).
mounts_under() {
  awk -v dir="$1" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Removes a build directory without ever descending into a mounted file system.
remove_tree() {
  local dir="$1" m
  [ -e "$dir" ] || return 0
  while read -r m; do
    if [ -n "$m" ]; then umount -l "$m" 2>/dev/null || true; fi
  done < <(mounts_under "$dir")
  rm -rf --one-file-system "$dir"
}

if [ "$action" != rebuild ] && [ -d "$entry/root" ]; then
  if [ -w "$cache" ]; then
    touch "$entry"
    point_current
  fi
  if [ "$action" = check ]; then check_manifest; fi
  echo "$entry/root"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  say "the sandbox root for this package list is not built yet ($entry)."
  say "Building it needs root (debootstrap, chroot): sudo bash $here/build.sh"
  exit 1
fi

if ! command -v debootstrap >/dev/null || [ ! -e /usr/share/debootstrap/scripts/$suite ]; then
  say "installing debootstrap (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi
if [ ! -e /usr/share/debootstrap/scripts/$suite ]; then
  say "this debootstrap ($(debootstrap --version)) does not know Debian $suite; install a newer one"
  exit 1
fi

mkdir -p "$cache"
chmod 0755 "$cache"

# One build at a time per cache; a second set-up waits for the first and then finds its result.
exec 9>"$cache/.lock"
if ! flock -n 9; then
  say "another build holds $cache/.lock; waiting for it"
  flock 9
fi
if [ "$action" = rebuild ] && [ -d "$entry" ]; then
  say "removing the cached root $entry (--rebuild)"
  remove_tree "$entry"
fi
if [ -d "$entry/root" ]; then
  touch "$entry"
  point_current
  if [ "$action" = check ]; then check_manifest; fi
  echo "$entry/root"
  exit 0
fi

# Leftovers of interrupted builds: only the lock holder builds, so none is in use.
for stale in "$cache"/.build-*; do
  if [ -e "$stale" ]; then
    say "removing an interrupted build: $stale"
    remove_tree "$stale"
  fi
done

work="$cache/.build-$key-$$"
trap 'remove_tree "$work"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$work"

include=$(echo "$packages" | paste -sd, -)
started=$(date +%s)
say "building the sandbox root (Debian $suite minbase + $(echo "$packages" | wc -l) packages from $here/packages.txt)"
say "into $entry from $mirror; this downloads every package and takes a minute or more"
# The release suite only (what point releases bring), not trixie-security: the root's programs run
# under the sandbox's confinement with the script's own privileges, so a flaw in them gives a
# script nothing it does not already have, and one suite keeps the result reproducible from one
# point release to the next. debootstrap checks the suite's signature with the host's
# debian-archive-keyring.
debootstrap --variant=minbase --components=main --include="$include" "$suite" "$work/root" "$mirror" >&2

root="$work/root"
if [ -n "$(mounts_under "$root")" ]; then
  say "debootstrap left file systems mounted in the root; not touching it:"
  mounts_under "$root" >&2
  exit 1
fi
say "trimming the root for the sandbox"
# Headless: Debian 13's python3-matplotlib Depends on python3-pil.imagetk, which drags in Tk, Tcl,
# BLT and the X11 client libraries. No sandbox has a display, and matplotlib uses Agg without one,
# so the Tk chain and the X libraries only it uses are purged. dpkg then records one deliberately
# unmet dependency (python3-matplotlib -> python3-pil.imagetk); nothing installs into this root
# afterwards, so nothing trips over it. libxcb1 stays (python3-pil links it).
gui="python3-pil.imagetk python3-tk python3.13-tk blt tk8.6-blt2.5 libtk8.6 libtcl8.6
  libxft2 libxss1 libxext6 libxrender1 libx11-6 libx11-data x11-common libfontconfig1 fontconfig-config"
# shellcheck disable=SC2086 # one word per package
if ! chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin DEBIAN_FRONTEND=noninteractive \
  dpkg --purge --force-depends $gui >"$work/purge.log" 2>&1; then
  cat "$work/purge.log" >&2
  exit 1
fi
# Downloaded package indexes and archives: the sandbox installs nothing.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/log/* "$root"/var/lib/dpkg/*-old
# Documentation nobody reads in a sandbox; the copyright files stay (the image redistributes the
# packages, and their licences ask for them).
rm -rf "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/lintian "$root"/usr/share/linda
find "$root"/usr/share/doc -xdev -type f ! -name copyright -delete
find "$root"/usr/share/doc -xdev -depth -mindepth 1 -type d -empty -delete
# Message translations of the base system's programs (33 MB); Python does not use them. glibc's
# locale.alias stays.
find "$root"/usr/share/locale -xdev -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# Host details debootstrap copies in: the root must not depend on, or reveal, the machine that built it.
rm -f "$root"/etc/resolv.conf "$root"/etc/hostname
: >"$root"/etc/resolv.conf
echo sandbox >"$root"/etc/hostname
# Python's byte code (__pycache__) stays: Debian compiles it at install, and the root is read-only
# at run time, so without it every cold start would compile numpy and pandas from source again.
#
# Device nodes: the sandboxes provide /dev (nsjail binds /dev/null, /dev/zero, /dev/urandom; the
# seccomp mode sets up its own), so the root carries none: nothing to copy or misuse.
find "$root"/dev -xdev -mindepth 1 ! -type d -delete
# No setuid/setgid programs: nothing in the root may gain privileges (the mounts are nosuid too).
find "$root" -xdev ! -type l -perm /6000 -exec chmod ug-s {} +
# Root-owned, and writable by no one else: /tmp, /var/tmp and the like are 0755 root here; each
# sandbox mounts or creates its own private, writable /tmp.
find "$root" -xdev \( ! -user 0 -o ! -group 0 \) -exec chown -h 0:0 {} +
find "$root" -xdev ! -type l -perm /1022 -exec chmod go-w,-t {} +
chmod 0755 "$root"

# The lock of the root: every installed package and its version.
dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${db:Status-Status} ${Package} ${Version}\n' |
  awk '$1 == "installed" { print $2, $3 }' | LC_ALL=C sort >"$work/manifest.txt"
echo "$packages" >"$work/packages.txt"
finished=$(date +%s)
{
  echo "suite: $suite"
  echo "mirror: $mirror"
  echo "debootstrap: $(debootstrap --version)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "seconds: $((finished - started))"
  echo "size: $(du -sh --one-file-system "$root" | cut -f1)"
} >"$work/build-info"
chmod 0755 "$work"

# Complete: make it visible in one rename.
mv -T "$work" "$entry"
trap - EXIT
touch "$entry"
point_current
# Each root is about 600 MB: keep the three used most recently (another worktree's list, the
# previous list to go back to) and remove older ones.
while read -r old; do
  say "removing an older root: $cache/$old"
  remove_tree "${cache:?}/$old"
done < <(cd "$cache" && find . -mindepth 1 -maxdepth 1 -type d -regex './[0-9a-f]*' -printf '%T@ %f\n' | sort -rn | tail -n +4 | cut -d' ' -f2)
say "built $entry/root ($(du -sh --one-file-system "$entry/root" | cut -f1), $(wc -l <"$entry/manifest.txt") packages) in $((finished - started)) s"
if [ "$action" = check ]; then check_manifest; fi
echo "$entry/root"
