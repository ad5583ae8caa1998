#!/usr/bin/env sh
# tests/test_playground.py drives the playground page in headless Chromium through Selenium.
# Install Debian's chromium and its chromedriver where we can; never fail the set-up (the test
# itself fails with a clear message when they are missing).
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo -n"
  APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"
  echo "Installing chromium and chromium-driver (Debian packages) for the playground's browser test"
  if $APT install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
     { $APT update -qq >/dev/null 2>&1 && \
       $APT install -y -qq chromium chromium-driver >/dev/null 2>&1; }; then
    exit 0
  fi
fi
echo "note: could not install chromium and chromedriver; tests/test_playground.py will fail." >&2
echo "      Install them (Debian/Ubuntu: chromium chromium-driver; macOS: brew install chromium" >&2
echo "      chromedriver), or set MLXDEPLOY_SKIP_BROWSER_TESTS=1 to skip the browser test." >&2
exit 0
