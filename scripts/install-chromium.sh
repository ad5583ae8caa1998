#!/usr/bin/env sh
# tests/test_playground.py drives the playground page in headless Chromium through Selenium.
# Install Debian's chromium and its chromedriver where we can; never fail the set-up (the test
# itself fails with a clear message when they are missing).
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
if [ "$(uname -s)" = "Linux" ]; then
  echo "Installing chromium and chromium-driver (Debian packages) for the playground's browser test"
  "$(dirname "$0")/apt-install.sh" chromium chromium-driver && exit 0
fi
echo "note: could not install chromium and chromedriver; tests/test_playground.py will fail." >&2
echo "      Install them (Debian/Ubuntu: chromium chromium-driver; macOS: brew install chromium" >&2
echo "      chromedriver), or set MLXDEPLOY_SKIP_BROWSER_TESTS=1 to skip the browser test." >&2
exit 0
