#!/usr/bin/env bash
# The coding-agent tests drive real agent CLIs (Claude Code, Codex CLI, opencode, aider) against a
# local mlxdeploy server. Install pinned versions of them under .agents/ in the repository:
#   .agents/node   npm packages @anthropic-ai/claude-code, @openai/codex, opencode-ai
#                  (their bin/ links are in .agents/node/node_modules/.bin)
#   .agents/aider  a venv of its own with aider-chat (its pinned dependencies clash with ours)
# Node and npm come from Debian only when missing. Idempotent and quiet: prints one line per thing
# it installs and nothing when all is in place. Exit 0 when every CLI answers --version.
set -euo pipefail

CLAUDE_CODE_VERSION=2.1.197
CODEX_VERSION=0.171.0
OPENCODE_VERSION=1.18.33
AIDER_VERSION=0.86.2

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
AGENTS="${MLXDEPLOY_AGENTS_DIR:-$ROOT/.agents}"
NODE_PREFIX="$AGENTS/node"
AIDER_VENV="$AGENTS/aider"
BIN="$NODE_PREFIX/node_modules/.bin"

# --- node and npm --------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "Installing nodejs and npm (Debian packages) for the coding-agent CLIs"
  "$ROOT/scripts/apt-install.sh" nodejs npm || { echo "error: could not install nodejs and npm" >&2; exit 1; }
fi

# --- npm CLIs ------------------------------------------------------------------------------
installed_version() {  # installed_version PACKAGE -> its version under $NODE_PREFIX, or nothing
  local pj="$NODE_PREFIX/node_modules/$1/package.json"
  [ -f "$pj" ] && node -p "require(process.argv[1]).version" "$pj" 2>/dev/null || true
}
want_npm=()
[ "$(installed_version @anthropic-ai/claude-code)" = "$CLAUDE_CODE_VERSION" ] && [ -x "$BIN/claude" ] \
  || want_npm+=("@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION")
[ "$(installed_version @openai/codex)" = "$CODEX_VERSION" ] && [ -x "$BIN/codex" ] \
  || want_npm+=("@openai/codex@$CODEX_VERSION")
[ "$(installed_version opencode-ai)" = "$OPENCODE_VERSION" ] && [ -x "$BIN/opencode" ] \
  || want_npm+=("opencode-ai@$OPENCODE_VERSION")
if [ "${#want_npm[@]}" -gt 0 ]; then
  mkdir -p "$NODE_PREFIX"
  cat >"$NODE_PREFIX/package.json" <<EOF
{
  "name": "mlxdeploy-agents",
  "private": true,
  "description": "Coding-agent CLIs for mlxdeploy's agent tests (written by scripts/install-agents.sh)",
  "dependencies": {
    "@anthropic-ai/claude-code": "$CLAUDE_CODE_VERSION",
    "@openai/codex": "$CODEX_VERSION",
    "opencode-ai": "$OPENCODE_VERSION"
  }
}
EOF
  for p in "${want_npm[@]}"; do echo "Installing $p into $NODE_PREFIX"; done
  # The packages' postinstall scripts only link the platform binary from an optional dependency;
  # they must run (npm runs them by default).
  npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --update-notifier=false \
    --loglevel=error --no-package-lock >/dev/null \
    || { echo "error: npm install failed in $NODE_PREFIX" >&2; exit 1; }
fi

# --- aider ---------------------------------------------------------------------------------
aider_ok() {
  compgen -G "$AIDER_VENV/lib/python3*/site-packages/aider_chat-$AIDER_VERSION.dist-info" >/dev/null \
    && [ -x "$AIDER_VENV/bin/aider" ]
}
if ! aider_ok; then
  echo "Installing aider-chat==$AIDER_VERSION into $AIDER_VENV"
  PY="${PYTHON:-python3}"
  [ -x "$AIDER_VENV/bin/python" ] || "$PY" -m venv --without-pip "$AIDER_VENV"
  if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -m uv --version >/dev/null 2>&1; then
    UV=("$ROOT/.venv/bin/python" -m uv)
  elif command -v uv >/dev/null 2>&1; then
    UV=(uv)
  else
    UV=()
  fi
  if [ "${#UV[@]}" -gt 0 ]; then
    "${UV[@]}" pip install -q --python "$AIDER_VENV/bin/python" "aider-chat==$AIDER_VERSION" \
      || { echo "error: could not install aider-chat" >&2; exit 1; }
  else
    "$AIDER_VENV/bin/python" -m ensurepip -q >/dev/null 2>&1 || true
    "$AIDER_VENV/bin/python" -m pip install -q --disable-pip-version-check "aider-chat==$AIDER_VERSION" \
      || { echo "error: could not install aider-chat" >&2; exit 1; }
  fi
fi

# --- check each CLI runs -------------------------------------------------------------------
status=0
CHECK_HOME="$(mktemp -d)"  # the CLIs may write caches and settings under HOME even for --version
trap 'rm -rf "$CHECK_HOME"' EXIT
check() {  # check NAME COMMAND... : the command's --version must exit 0
  local name="$1"; shift
  if ! HOME="$CHECK_HOME" XDG_CONFIG_HOME="$CHECK_HOME/.config" XDG_DATA_HOME="$CHECK_HOME/.local/share" \
      XDG_CACHE_HOME="$CHECK_HOME/.cache" XDG_STATE_HOME="$CHECK_HOME/.local/state" CODEX_HOME="$CHECK_HOME/.codex" \
      "$@" --version >/dev/null 2>&1 </dev/null; then
    echo "error: $name does not run: $* --version" >&2
    status=1
  fi
}
check claude "$BIN/claude"
check codex "$BIN/codex"
check opencode "$BIN/opencode"
check aider "$AIDER_VENV/bin/aider"
exit $status
