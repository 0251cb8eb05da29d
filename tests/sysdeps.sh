#!/bin/sh
# Debian packages the test suite needs, installed by `make test` when run as root.
# Each line: a command that must exist, then the packages that provide it.
set -e
need=""
check() { command -v "$1" >/dev/null 2>&1 || need="$need $2"; }
# (components add their lines here)
check chromium chromium            # ypws: the browser test (upload page -> gallery), driven by playwright
check haproxy haproxy              # hashproxy: HAProxy as the front (haproxy-config is checked with haproxy -c and run)
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian packages:$need"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null; }; then
            echo "WARNING: could not install$need; the tests that need them will be SKIPPED" >&2
        fi
    else
        echo "warning: missing Debian packages:$need (not root; tests that need them will be skipped)" >&2
    fi
fi
