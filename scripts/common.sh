# Shared by the scripts: where each PostgreSQL build lives.
CACHE=${WALARCH_CACHE:-/var/cache/walarch}
export PATH="$HOME/.cargo/bin:$PATH"

# pg_bindir MAJOR: the bin directory of that PostgreSQL build.
pg_bindir() {
  if [ "$1" = 15 ]; then echo /usr/lib/postgresql/15/bin; else echo "$CACHE/pg$1/bin"; fi
}
