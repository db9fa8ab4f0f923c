#!/usr/bin/env bash
# Build podrun's example and test images offline from this Debian host's packages and write
# them as OCI image archives (a tar of an OCI image layout) to images/out/:
#
#   busybox.tar  docker.io/library/busybox:latest  busybox-static, one hard link per applet
#   nginx.tar    docker.io/library/nginx:latest    Debian's nginx (nginx-light) + its libraries
#   curl.tar     docker.io/library/curl:latest     Debian's curl + its libraries
#
# Every image has two layers: a shared base (busybox applets in /bin, /etc/passwd, /etc/group,
# /tmp) and the image's own files, so loading all three also exercises layer sharing.
# The output is deterministic for a given set of host packages: fixed mtimes, sorted tar
# entries, numeric root ownership and gzip without names or timestamps, so digests are stable
# and re-running the script rewrites identical files.
#
# Usage: images/build.sh [out-dir]      (run as root only if packages must be installed)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/out}"
umask 022
export LC_ALL=C

PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CREATED="1970-01-01T00:00:00Z"
TAR_FLAGS=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu)

log() { printf 'build.sh: %s\n' "$*" >&2; }

ensure_packages() {
    local missing=() pkg
    for pkg in busybox-static nginx-light curl; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    # nginx's postinst would start the host's nginx on port 80; a policy-rc.d that denies
    # service starts keeps the host untouched. Only a policy we created is removed again.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local rc=0
    { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } || rc=$?
    [ "$created_policy" -eq 1 ] && rm -f "$policy"
    return "$rc"
}

find_busybox() {
    local p
    for p in /bin/busybox /usr/bin/busybox; do
        if [ -x "$p" ] && dpkg -S "$p" 2>/dev/null | grep -q '^busybox-static:'; then
            echo "$p"
            return 0
        fi
    done
    log "busybox-static's binary not found"
    return 1
}

# Copy a file to the same path under root, following symlinks so the image holds a regular
# file even where the host path is a link (usrmerge: /lib -> usr/lib).
copy_file() {
    local root="$1" src="$2"
    mkdir -p "$root$(dirname "$src")"
    cp -L --preserve=mode "$src" "$root$src"
}

# Copy an ELF binary and every shared library ldd finds for it, the loader included.
copy_with_libs() {
    local root="$1" bin="$2" lib
    copy_file "$root" "$bin"
    while read -r lib; do
        [ -n "$lib" ] && copy_file "$root" "$lib"
    done < <(ldd "$bin" | awk '/=> \// { print $3; next } /^[ \t]*\// { print $1 }' | sort -u)
}

make_base() {
    local root="$1" busybox applet
    busybox="$(find_busybox)"
    mkdir -p "$root"/{bin,etc,root,dev,proc,sys,var,run}
    mkdir -m 1777 "$root/tmp"
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    cp --preserve=mode "$busybox" "$root/bin/busybox"
    # Hard links, not symlinks: masking one applet path (a bind mount over /bin/cat) must not
    # mask the others, and each link is still the one static binary on disk.
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] && continue
        ln "$root/bin/busybox" "$root/bin/$applet"
    done
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
www-data:x:33:
app:x:1000:
nogroup:x:65534:
EOF
    cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
    mkdir -p "$root/home/app"
}

make_nginx() {
    local root="$1"
    copy_with_libs "$root" /usr/sbin/nginx
    mkdir -p "$root/etc/nginx" "$root/var/lib/nginx" "$root/var/log/nginx" \
        "$root/usr/share/nginx/html" "$root/run"
    cp --preserve=mode /etc/nginx/mime.types "$root/etc/nginx/mime.types"
    # Logs go to the container's stdout/stderr, also for paths compiled into the binary.
    ln -s /dev/stdout "$root/var/log/nginx/access.log"
    ln -s /dev/stderr "$root/var/log/nginx/error.log"
    # No `daemon` directive here: the image's Cmd passes `-g "daemon off;"` (as the Docker
    # Hub image does), and nginx refuses a directive given twice.
    cat >"$root/etc/nginx/nginx.conf" <<'EOF'
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /dev/stderr notice;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;

    server {
        listen 80 default_server;
        server_name _;
        root /usr/share/nginx/html;
        index index.html;
        location / {
            try_files $uri $uri/ =404;
        }
    }
}
EOF
    cat >"$root/usr/share/nginx/html/index.html" <<'EOF'
<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
</body>
</html>
EOF
}

make_curl() {
    copy_with_libs "$1" /usr/bin/curl
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Tar a directory into a gzipped layer blob in the layout. Prints "<diff_id> <digest> <size>".
add_layer() {
    local dir="$1" layout="$2" tmp diff_id digest size
    tmp="$(mktemp "$layout/layer.XXXXXX")"
    tar "${TAR_FLAGS[@]}" -C "$dir" -cf "$tmp" .
    diff_id="$(sha "$tmp")"
    gzip -n -9 -c "$tmp" >"$tmp.gz"
    rm -f "$tmp"
    digest="$(sha "$tmp.gz")"
    size="$(stat -c %s "$tmp.gz")"
    mv "$tmp.gz" "$layout/blobs/sha256/$digest"
    echo "$diff_id $digest $size"
}

# Store a JSON document as a blob. Prints "<digest> <size>".
add_json_blob() {
    local layout="$1" json="$2" tmp digest
    tmp="$(mktemp "$layout/json.XXXXXX")"
    printf '%s' "$json" >"$tmp"
    digest="$(sha "$tmp")"
    echo "$digest $(stat -c %s "$tmp")"
    mv "$tmp" "$layout/blobs/sha256/$digest"
}

json_array() {
    local first=1 s out="["
    for s in "$@"; do
        [ $first -eq 1 ] || out+=","
        first=0
        out+="\"$s\""
    done
    printf '%s]' "$out"
}

# build_image NAME BASE_DIR APP_DIR CONFIG_FIELDS
# CONFIG_FIELDS is the JSON members of the image config's "config" object after Env.
build_image() {
    local name="$1" base="$2" app="$3" fields="$4"
    local layout="$work/layout-$name" full="docker.io/library/$name:latest"
    mkdir -p "$layout/blobs/sha256"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

    local l1 l2
    read -r -a l1 <<<"$(add_layer "$base" "$layout")"
    read -r -a l2 <<<"$(add_layer "$app" "$layout")"

    local config cfg manifest man
    config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"$CREATED\","
    config+="\"config\":{\"Env\":[\"$PATH_ENV\"]$fields},"
    config+="\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:${l1[0]}\",\"sha256:${l2[0]}\"]},"
    config+="\"history\":[{\"created\":\"$CREATED\",\"created_by\":\"images/build.sh: busybox base\"},"
    config+="{\"created\":\"$CREATED\",\"created_by\":\"images/build.sh: $name\"}]}"
    read -r -a cfg <<<"$(add_json_blob "$layout" "$config")"

    local layer_mt="application/vnd.oci.image.layer.v1.tar+gzip"
    manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
    manifest+="\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:${cfg[0]}\",\"size\":${cfg[1]}},"
    manifest+="\"layers\":[{\"mediaType\":\"$layer_mt\",\"digest\":\"sha256:${l1[1]}\",\"size\":${l1[2]}},"
    manifest+="{\"mediaType\":\"$layer_mt\",\"digest\":\"sha256:${l2[1]}\",\"size\":${l2[2]}}]}"
    read -r -a man <<<"$(add_json_blob "$layout" "$manifest")"

    printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:${man[0]}\",\"size\":${man[1]},\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$full\",\"org.opencontainers.image.ref.name\":\"latest\"}}]}" \
        >"$layout/index.json"

    # Write next to the target and rename, so a reader never sees half an archive.
    local tmp_out
    tmp_out="$(mktemp "$out/.$name.tar.XXXXXX")"
    tar "${TAR_FLAGS[@]}" -C "$layout" -cf "$tmp_out" oci-layout index.json blobs
    chmod 644 "$tmp_out"
    mv -f "$tmp_out" "$out/$name.tar"
    log "$out/$name.tar: $full manifest sha256:${man[0]} image id sha256:${cfg[0]}"
}

main() {
    ensure_packages
    mkdir -p "$out"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"; rm -f "$out"/.*.tar.??????' EXIT

    make_base "$work/base"
    mkdir -p "$work/busybox" "$work/nginx" "$work/curl"
    # busybox's own layer holds only an empty /home marker dir so it has two layers like
    # the others while sharing the base.
    mkdir -p "$work/busybox/home"
    make_nginx "$work/nginx"
    make_curl "$work/curl"

    build_image busybox "$work/base" "$work/busybox" ",\"Cmd\":[\"sh\"]"
    build_image nginx "$work/base" "$work/nginx" \
        ",\"Entrypoint\":$(json_array /usr/sbin/nginx),\"Cmd\":$(json_array -g "daemon off;"),\"ExposedPorts\":{\"80/tcp\":{}},\"StopSignal\":\"SIGQUIT\""
    build_image curl "$work/base" "$work/curl" ",\"Cmd\":[\"sh\"]"
}

main "$@"
