"""An emulated BMC for the ipmi driver's tests: pyghmi's own IPMI server (pyghmi.ipmi.bmc).

``python -m tests.ipmi_bmc PORT ADDR NAME``: node NAME's BMC on ADDR (a loopback address such
as 127.0.0.2), UDP PORT, user ``admin`` password ``password``, chassis off; each power change is
printed as ``NAME on``/``NAME off`` (flushed), so a test sees what the BMC was asked. One BMC
per process: pyghmi's server keys its sessions by the client's address and the BMC's port, so
two BMCs on one port in one process answer each other's sessions.

One fix to the emulator, not to the client: pyghmi 1.6's server always answers the RMCP+
open-session request with cipher suite 3 (HMAC-SHA1) keys, even when the client asked for
SHA-256 (pyghmi's client asks for SHA-256 first), and the client then fails on a 20-byte
hash where it expects 32. A real SHA-1-only BMC refuses the suite instead (status 0x11,
"invalid authentication algorithm"), and the client retries with SHA-1; the emulator here
does that.
"""

from __future__ import annotations

import sys

import pyghmi.ipmi.bmc as bmc
import pyghmi.ipmi.private.serversession as serversession

SHA1 = 1  # RAKP-HMAC-SHA1, the one authentication algorithm the emulator speaks
INVALID_AUTH_ALGORITHM = 0x11
_respond = serversession.ServerSession.create_open_session_response


def _open_session_response(self: serversession.ServerSession, request: bytearray) -> bytearray:
    if len(request) > 12 and request[12] != SHA1:  # the authentication payload's algorithm
        return bytearray([request[0], INVALID_AUTH_ALGORITHM, 0, 0]) + request[4:8]
    return _respond(self, request)


serversession.ServerSession.create_open_session_response = _open_session_response


class NodeBmc(bmc.Bmc):
    """A BMC whose chassis is off until asked; it says each change on stdout."""

    def __init__(self, name: str, address: str, port: int) -> None:
        super().__init__({"admin": "password"}, port=port, address=address)
        self.name, self.powerstate = name, "off"

    def get_power_state(self) -> str:
        return self.powerstate

    def _power(self, state: str) -> None:
        self.powerstate = state
        print(f"{self.name} {state}", flush=True)

    def power_on(self) -> None:
        self._power("on")

    def power_off(self) -> None:
        self._power("off")

    def power_shutdown(self) -> None:
        self._power("off")

    def power_reset(self) -> None:
        pass

    def cold_reset(self) -> None:
        pass

    def is_active(self) -> bool:
        return self.powerstate == "on"


def main(argv: list[str]) -> None:
    port, address, name = int(argv[0]), argv[1], argv[2]
    NodeBmc(name, address, port)
    print("ready", flush=True)
    bmc.Bmc.listen(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1:])
