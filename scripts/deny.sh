#!/usr/bin/env bash
# cargo deny (deny.toml): advisories, bans, licenses and sources of every crate in the graph.
#
# The machines reach no network beyond the package registries, so the RustSec advisory database
# is not fetched: this script makes a git repository of the snapshot in ../shared/advisory-db
# (SENSORGATE_ADVISORY_DB names another copy) where cargo-deny looks for its database, dated at
# the snapshot's date (its SNAPSHOT file: commit and date) so that deny.toml's
# maximum-db-staleness judges the data, not the copy. Without a snapshot the advisories check is
# skipped, loudly, and the script exits 77 after the other checks pass.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

snapshot=${SENSORGATE_ADVISORY_DB:-../shared/advisory-db}
dbs=${SENSORGATE_ADVISORY_DBS:-target/advisory-dbs}
# cargo-deny's directory for db-urls = ["https://github.com/RustSec/advisory-db"]: the URL's last
# path segment and a hash of the URL (cargo-deny 0.20).
repo=$dbs/advisory-db-3157b0e258782691

if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "==> Installing cargo-deny (once; about 10 minutes on 2 cores)"
    cargo install --locked cargo-deny@0.20.2
fi

# cargo-deny runs `cargo metadata` offline: have every platform's crates downloaded first.
cargo fetch --locked --quiet

checks=(bans licenses sources)
skipped=0
if [[ -f $snapshot/SNAPSHOT ]]; then
    if ! cmp -s "$snapshot/SNAPSHOT" "$repo/.snapshot" 2>/dev/null; then
        read -r commit date <"$snapshot/SNAPSHOT"
        rm -rf "$repo"
        mkdir -p "$dbs"
        cp -r "$snapshot" "$repo"
        git -C "$repo" init --quiet
        git -C "$repo" add --all
        GIT_AUTHOR_DATE="${date}T00:00:00Z" GIT_COMMITTER_DATE="${date}T00:00:00Z" \
            git -C "$repo" -c user.name=sensorgate -c user.email=sensorgate@invalid \
            commit --quiet --message "RustSec advisory-db $commit ($date)"
        # cargo-deny takes the newer of the commit's date and HEAD's modification time.
        touch -d "${date}T00:00:00Z" "$repo/.git/HEAD"
        cp "$snapshot/SNAPSHOT" "$repo/.snapshot"
    fi
    echo "advisory database: $(cat "$repo/.snapshot")"
    checks+=(advisories)
else
    echo "!!! cargo deny: advisories SKIPPED, no advisory database snapshot at $snapshot" >&2
    skipped=1
fi

SENSORGATE_ADVISORY_DBS=$dbs cargo deny --offline check "${checks[@]}"

if ((skipped)); then
    exit 77
fi
