# Headless Chromium for the web console's browser tests (tests/browser.rs),
# from the distribution's packages when missing. Sourced by .ci/run; the
# tests fail (never skip) under PULSE_LEDGER_CI when it is not there.

find_chromium() {
    for c in chromium chromium-browser google-chrome; do
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

install_chromium() {
    if ! find_chromium >/dev/null; then
        if [ "$(id -u)" != 0 ]; then
            echo "chromium: not installed, and not root to install it (apt-get install chromium)" >&2
            exit 1
        fi
        echo "chromium: installing the distribution's package"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    PULSE_TEST_CHROMIUM=$(find_chromium) || { echo "chromium: installed, but not found" >&2; exit 1; }
    export PULSE_TEST_CHROMIUM
    echo "chromium: $("$PULSE_TEST_CHROMIUM" --version 2>/dev/null || echo "$PULSE_TEST_CHROMIUM")"
}
