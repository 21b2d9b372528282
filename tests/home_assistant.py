"""A real Home Assistant Core on loopback, for the opt-in tests that check the speaker's MQTT discovery against it.

`ha_venv()` finds or makes a virtualenv with Home Assistant Core (`HA_VERSION`, on the Python 3.13 of `HA_PYTHON`)
at `HA_VENV`, outside the checkout. `HomeAssistant` runs `hass -c CONFIG_DIR` on 127.0.0.1 and a free port with a
small configuration, makes the owner through onboarding (for a token), adds the MQTT integration through its config
flow, and offers what the tests ask of it: states, service calls, and the registries over the websocket API. Every
wait is bounded; `stop()` kills the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from mosquitto import free_port

HA_VERSION = "2025.4.4"
HA_PYTHON = Path("/root/.pyenv/versions/3.13.0/bin/python3")
HA_VENV = Path("/var/tmp/ha-venv")
#: What the integrations set up at every start (bootstrap's DEFAULT_INTEGRATIONS and their dependencies: frontend,
#: backup, hardware, network, ...) and MQTT need from PyPI. Home Assistant would install them itself at its first
#: start, from the package index; installed beforehand, it runs with --skip-pip and needs no index at all.
HA_REQUIREMENTS = (
    "Pillow==11.1.0",
    "cronsim==2.6",
    "home-assistant-frontend==20250411.0",
    "ifaddr==0.2.0",
    "isal==1.7.1",
    "paho-mqtt==2.1.0",
    "psutil-home-assistant==0.0.1",
    "securetar==2025.2.1",
)
CLIENT_ID = "http://127.0.0.1/"  # onboarding's and the token endpoint's client: any URL, the same in both


class HomeAssistantUnavailable(Exception):
    """Home Assistant could not be installed or started here (the tests are skipped with this reason)."""


def ha_venv(timeout: float = 900) -> Path:
    """The venv's `hass`, installing Home Assistant and `HA_REQUIREMENTS` first where they are missing."""
    hass = HA_VENV / "bin" / "hass"
    if hass.exists() and _installed(HA_VENV):
        return hass
    if not HA_PYTHON.exists():
        raise HomeAssistantUnavailable(f"{HA_PYTHON} (Python 3.13, which Home Assistant {HA_VERSION} needs) is missing")
    steps = [
        [str(HA_PYTHON), "-m", "venv", str(HA_VENV)],
        [str(HA_VENV / "bin" / "pip"), "install", "-q", f"homeassistant=={HA_VERSION}", *HA_REQUIREMENTS],
    ]
    deadline = time.monotonic() + timeout
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise HomeAssistantUnavailable(f"installing Home Assistant took over {timeout:.0f} s") from None
        if done.returncode != 0:
            raise HomeAssistantUnavailable(f"{' '.join(step[:3])} failed: {done.stderr[-500:]}")
    if not _installed(HA_VENV):
        raise HomeAssistantUnavailable(f"Home Assistant {HA_VERSION} is not in {HA_VENV} after installing it")
    return hass


def _installed(venv: Path) -> bool:
    """Home Assistant at HA_VERSION and every requirement, as pip's metadata says (no import: that takes seconds)."""
    names = [f"homeassistant=={HA_VERSION}", *HA_REQUIREMENTS]
    check = (
        "import sys, importlib.metadata as m\n"
        "for spec in sys.argv[1:]:\n"
        "    name, _, version = spec.partition('==')\n"
        "    try:\n"
        "        assert m.version(name) == version\n"
        "    except Exception:\n"
        "        sys.exit(1)\n"
    )
    try:
        done = subprocess.run([str(venv / "bin" / "python"), "-c", check, *names], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


CONFIGURATION = """\
homeassistant:
  name: Museum test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
  language: en
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
"""


class HomeAssistant:
    """`hass -c config_dir` on loopback; `start()` returns once the owner, a token and the MQTT entry exist."""

    def __init__(self, hass: Path, config_dir: Path, broker_port: int):
        self.hass, self.config_dir, self.broker_port = hass, config_dir, broker_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config_dir / "home-assistant.log"
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None

    # -- lifetime

    def start(self, timeout: float = 180) -> HomeAssistant:
        """Start (onboarded and with MQTT the first time), waiting until the API answers and MQTT is loaded."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))
        command = [str(self.hass), "-c", str(self.config_dir), "--skip-pip", "--log-file", str(self.log)]
        with open(self.config_dir / "hass.out", "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        self._until(self._answers, deadline, "its HTTP server")
        if self.token is None:
            self.token = self._onboard()
        self._until(lambda: self._core_state() == "RUNNING", deadline, "state RUNNING")
        if not self.config_entries("mqtt"):
            self._add_mqtt()
        self._until(lambda: self.config_entries("mqtt")[0]["state"] == "loaded", deadline, "the MQTT entry loaded")
        return self

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (Home Assistant saves its registries on the way out), then SIGKILL if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, timeout: float = 180) -> None:
        self.stop()
        self.start(timeout)

    def _until(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise HomeAssistantUnavailable(f"hass exited ({self.proc.returncode}): {self.tail()}")
            try:
                if check():
                    return
            except (OSError, KeyError, IndexError, ValueError):
                pass  # not up yet
            if time.monotonic() > deadline:
                raise HomeAssistantUnavailable(f"Home Assistant: no {what} in time; log: {self.tail()}")
            time.sleep(0.25)

    def tail(self, chars: int = 2000) -> str:
        for path in (self.log, self.config_dir / "hass.out"):
            if path.exists() and path.stat().st_size:
                return path.read_text(errors="replace")[-chars:]
        return "(no log)"

    def log_lines(self) -> list[str]:
        """Every line logged so far, also before a restart (HA moves the last run's log to .log.1 at a start)."""
        runs = (self.log.with_name(self.log.name + ".1"), self.log)
        return [line for path in runs if path.exists() for line in path.read_text(errors="replace").splitlines()]

    # -- first start

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2) as answer:
            return answer.status == 200

    def _onboard(self) -> str:
        """The owner made through onboarding, and an access token from its authorization code."""
        password = secrets.token_urlsafe(16)  # never printed: only the token is kept, in memory
        owner = {"client_id": CLIENT_ID, "name": "Owner", "username": "owner", "password": password, "language": "en"}
        code = self._request("POST", "/api/onboarding/users", owner, auth=False)["auth_code"]
        form = {"grant_type": "authorization_code", "code": code, "client_id": CLIENT_ID}
        return self._request("POST", "/auth/token", form=form, auth=False)["access_token"]

    def _core_state(self) -> str:
        return self._request("GET", "/api/config")["state"]

    def _add_mqtt(self) -> None:
        """The MQTT integration through its config flow: the broker step with host and port, nothing else."""
        flow = self._request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        if flow.get("step_id") != "broker":
            raise HomeAssistantUnavailable(f"the MQTT config flow asked for {flow}")
        broker = {"broker": "127.0.0.1", "port": self.broker_port}
        done = self._request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", broker)
        if done.get("type") != "create_entry":
            raise HomeAssistantUnavailable(f"the MQTT config flow ended with {done}")

    # -- REST

    def _request(self, method: str, path: str, body: Any = None, *, form: dict | None = None, auth: bool = True):
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def config_entries(self, domain: str) -> list[dict]:
        return self._request("GET", f"/api/config/config_entries/entry?domain={domain}")

    def states(self) -> dict[str, dict]:
        """Every entity's state object, by entity id."""
        return {s["entity_id"]: s for s in self._request("GET", "/api/states")}

    def state(self, entity_id: str) -> dict | None:
        try:
            return self._request("GET", f"/api/states/{entity_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def call(self, domain: str, service: str, data: dict) -> tuple[int, str]:
        """POST /api/services/<domain>/<service>: (HTTP status, body); HA refusing the call is an answer, too."""
        try:
            self._request("POST", f"/api/services/{domain}/{service}", data)
            return 200, ""
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")[:500]

    def wait_state(self, entity_id: str, match: Callable[[dict], bool], timeout: float = 15) -> dict:
        """The entity's state object once `match` holds, waiting up to `timeout` s (an AssertionError after)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.state(entity_id)
            if found is not None and match(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{entity_id} in Home Assistant after {timeout} s: {found}")
            time.sleep(0.2)

    # -- websocket

    def ws(self, *messages: dict, timeout: float = 30) -> list[Any]:
        """The result of each websocket command (a dict with at least "type"), in one authenticated connection."""
        return asyncio.run(asyncio.wait_for(self._ws(messages), timeout))

    async def _ws(self, messages: tuple[dict, ...]) -> list[Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{self.url}/api/websocket") as ws:
            await self._authenticate(ws)
            results = []
            for number, message in enumerate(messages, 1):
                await ws.send_json({"id": number, **message})
                while True:
                    answer = await ws.receive_json()
                    if answer.get("id") == number and answer.get("type") == "result":
                        break
                if not answer.get("success"):
                    raise AssertionError(f"websocket {message['type']}: {answer.get('error')}")
                results.append(answer["result"])
            return results

    async def _authenticate(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.receive_json()  # auth_required
        await ws.send_json({"type": "auth", "access_token": self.token})
        hello = await ws.receive_json()
        if hello.get("type") != "auth_ok":
            raise HomeAssistantUnavailable(f"websocket authentication: {hello.get('type')}")

    def changes_during(self, entity_id: str, action: Callable[[], None], seconds: float = 3) -> list[dict]:
        """What HA sends its frontend about `entity_id` (`subscribe_entities`, as a dashboard subscribes) while
        `action` runs and for `seconds` after: the change events, in order."""
        return asyncio.run(asyncio.wait_for(self._changes(entity_id, action, seconds), seconds + 60))

    async def _changes(self, entity_id: str, action: Callable[[], None], seconds: float) -> list[dict]:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{self.url}/api/websocket") as ws:
            await self._authenticate(ws)
            await ws.send_json({"id": 1, "type": "subscribe_entities", "entity_ids": [entity_id]})
            while (await ws.receive_json()).get("type") != "event":  # the result, then the entity as it is
                pass
            await asyncio.to_thread(action)
            changes, deadline = [], time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = await ws.receive_json(timeout=left)
                except TimeoutError:
                    break
                if message.get("type") == "event" and "c" in message["event"]:
                    changes.append(message["event"]["c"])
            return changes

    def devices(self) -> list[dict]:
        return self.ws({"type": "config/device_registry/list"})[0]

    def entities(self) -> list[dict]:
        return self.ws({"type": "config/entity_registry/list"})[0]

    def triggers(self, device_id: str) -> list[dict]:
        return self.ws({"type": "device_automation/trigger/list", "device_id": device_id})[0]
