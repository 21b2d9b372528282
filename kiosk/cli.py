"""Command line: `kiosk say`, `kiosk cache list|verify|prune`, `kiosk fleet status|say|update` (and `kiosk release`,
`kiosk update` from kiosk.update.commands).

Expected faults (bad config, no key, server down, bad device) are one line on stderr and a non-zero exit:
1 for a fault at run time, 2 for a bad config or bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import math
import os
import sys
import time
from pathlib import Path

from kiosk import __version__, in_step, logs
from kiosk.alsa_output import has_sound_card, wav_file_device
from kiosk.announcer import Announcer
from kiosk.build import build_cache, build_chain, build_player, build_voices, open_announcer
from kiosk.cache import PhraseCache
from kiosk.cache_entry import EntryInfo
from kiosk.config import DEFAULT_CONFIG_PATH, PHRASE_ID, Config, MqttConfig, load_config, text_problem
from kiosk.errors import ConfigError, KioskError
from kiosk.fleet import update as fleet_update
from kiosk.loudness import Leveller
from kiosk.service import run_service
from kiosk.update import commands as update_commands
from kiosk.warm import ready_ids, translated, warm
from kiosk.web.server import raise_open_file_limit

log = logging.getLogger("kiosk")

EXIT_FAULT = 1
EXIT_USAGE = 2
NO_CARD_WAV = "kiosk-say.wav"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kiosk: %(levelname)s: %(message)s"))
    logs.install(handler)  # a fault repeating in a loop must not flood the journal
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    for chatty in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request is noise in the journal
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"kiosk: config: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KioskError as exc:
        print(f"kiosk: error: {exc}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("KIOSK_CONFIG", DEFAULT_CONFIG_PATH)),
        help="config file (default: $KIOSK_CONFIG or %(default)s)",
    )
    common.add_argument("--cache-dir", type=Path, help="phrase cache directory (overrides cache.dir)")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress on stderr")

    parser = argparse.ArgumentParser(prog="kiosk", description="Exhibit speaker for museum installations.")
    parser.add_argument("--version", action="version", version=f"kiosk {__version__}")
    parser.set_defaults(verbose=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="the always-on service: buttons, HTTP API, systemd")
    run.add_argument("--device", metavar="ALSA_PCM", help="ALSA playback device (overrides audio.device)")
    run.add_argument("--port", type=int, metavar="N", help="HTTP API port (overrides api.port)")
    run.set_defaults(func=cmd_run, verbose=True)

    doctor = commands.add_parser("doctor", parents=[common], help="check config, audio, GPIO, key, engine, disk")
    doctor.add_argument("--device", metavar="ALSA_PCM", help="ALSA playback device (overrides audio.device)")
    doctor.set_defaults(func=cmd_doctor)

    passwd = commands.add_parser("passwd", parents=[common], help="set the staff web page's password")
    passwd.add_argument("--stdin", action="store_true", help="read the password from standard input")
    passwd.set_defaults(func=cmd_passwd)

    say = commands.add_parser("say", parents=[common], help="speak a line and exit")
    say.add_argument("text", nargs="?", help="text to speak")
    say.add_argument("--phrase", metavar="ID", help="speak the configured exhibit line with this id")
    say.add_argument("--language", metavar="CODE", help="in this offered language (default: the first offered)")
    say.add_argument("--device", metavar="ALSA_PCM", help="ALSA playback device (overrides audio.device)")
    say.add_argument("--wav", metavar="FILE", help="write the audio to a WAV file instead of a device")
    say.add_argument("--trace", action="store_true", help="print one JSON line with timings on stdout")
    say.set_defaults(func=cmd_say)

    cache = commands.add_parser("cache", help="inspect and repair the phrase cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cache_commands.add_parser("list", parents=[common], help="list entries").set_defaults(func=cmd_cache_list)
    cache_commands.add_parser(
        "warm", parents=[common], help="synthesize every configured line the cache lacks; report coverage"
    ).set_defaults(func=cmd_cache_warm)
    cache_commands.add_parser(
        "verify",
        parents=[common],
        help="check every block of every entry, remove corrupt ones and leftover temp files, rewrite old entries",
    ).set_defaults(func=cmd_cache_verify)
    prune = cache_commands.add_parser(
        "prune", parents=[common], help="evict least recently used ad-hoc lines down to the size cap"
    )
    prune.add_argument("--max-mb", type=float, help="size cap for this run (default: cache.max_mb)")
    prune.set_defaults(func=cmd_cache_prune)

    fleet = commands.add_parser("fleet", help="every speaker on the museum's MQTT broker (mqtt: in the config)")
    fleet_commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    fleet_commands.add_parser(
        "status", parents=[common], help="a table of every speaker seen on the broker"
    ).set_defaults(func=cmd_fleet_status)
    fleet_say = fleet_commands.add_parser("say", parents=[common], help="speak a configured line on speakers")
    target = fleet_say.add_mutually_exclusive_group(required=True)
    target.add_argument("--all", action="store_true", help="every speaker")
    target.add_argument("--group", metavar="G", help="the speakers in group G (mqtt.groups)")
    target.add_argument("--device", metavar="ID", help="one speaker (its mqtt.device_id)")
    fleet_say.add_argument("phrase", metavar="PHRASE", help="the id of a configured line")
    lead = "start together this many seconds after sending (default 0.5 for --all and --group; 0: each at once)"
    fleet_say.add_argument("--lead", metavar="SECONDS", type=float, help=lead)
    fleet_say.set_defaults(func=cmd_fleet_say)
    fleet_update.add_command(fleet_commands, common)
    update_commands.add_commands(commands, common)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    return {"device": getattr(args, "device", None), "cache_dir": args.cache_dir, "port": getattr(args, "port", None)}


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config).with_overrides(**_overrides(args))


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    raise_open_file_limit()  # connections are capped far below it; the rest is headroom for cache and device
    # Not asyncio.run: at its end it joins every worker thread, and one may be inside a native call that cannot
    # be interrupted (the local voice loading, an ALSA write). The service has closed everything by the time
    # run_service returns; waiting for such a thread would break the promise to stop within 2 s of SIGTERM.
    code = asyncio.new_event_loop().run_until_complete(
        run_service(cfg, config_path=args.config, overrides=_overrides(args))
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_doctor(args: argparse.Namespace) -> int:
    from kiosk.doctor import needs_sudo, run_checks

    why = needs_sudo([args.config])
    cfg = None if why else _config(args)
    why = why or needs_sudo([cfg.openai.api_key_file])
    if why:
        print(why, file=sys.stderr)
        return EXIT_FAULT
    findings = run_checks(cfg, str(args.config))
    for finding in findings:
        print(finding.line(), flush=True)
    return EXIT_FAULT if any(f.level == "fail" for f in findings) else 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from kiosk.staff.auth import PasswordFile, password_problem

    cfg = _config(args)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("New staff password: ")
        problem = password_problem(password)
        if problem:
            raise ConfigError([f"password: {problem}"])
        if getpass.getpass("Again: ") != password:
            raise ConfigError(["password: the two entries differ; nothing changed"])
    PasswordFile(cfg.staff.password_file).set(password)
    print(f"staff password set ({cfg.staff.password_file}); log in at http://<this speaker>:{cfg.staff.port}/")
    return 0


def cmd_say(args: argparse.Namespace) -> int:
    cfg = _config(args)
    text = _text_to_say(args, cfg)
    if args.wav:
        cfg = cfg.with_overrides(device=wav_file_device(os.path.abspath(args.wav)))
    elif not args.device and cfg.audio.device == "default" and not has_sound_card():
        log.warning("no sound card found: writing the audio to %s instead", NO_CARD_WAV)
        cfg = cfg.with_overrides(device=wav_file_device(os.path.abspath(NO_CARD_WAV)))
    trace = asyncio.run(_say(cfg, *text))
    if args.trace:
        print(trace.to_json(), flush=True)
    if trace.error:
        raise KioskError(trace.error)
    return 0


def _text_to_say(args: argparse.Namespace, cfg: Config) -> tuple[str, str | None]:
    """The text and the language it is spoken in."""
    if bool(args.text) == bool(args.phrase):
        raise ConfigError(["say: give either TEXT or --phrase ID"])
    if args.language is not None and cfg.language(args.language) is None:
        offered = ", ".join(lang.code for lang in cfg.languages) or "none (add languages: to the config)"
        raise ConfigError([f"say: --language {args.language} is not offered (offered: {offered})"])
    if args.phrase:
        if args.phrase not in cfg.phrases:
            known = ", ".join(sorted(cfg.phrases)) or "none"
            raise ConfigError([f"say: no phrase '{args.phrase}' in {args.config} (known: {known})"])
        return cfg.text_for(args.phrase, args.language)
    problem = text_problem(args.text)
    if problem:
        raise ConfigError([f"say: {problem}"])
    return args.text, args.language or cfg.default_language


async def _say(cfg: Config, text: str, language: str | None):
    async with open_announcer(cfg) as announcer:
        return await announcer.say(text, language=language)


def _announcer(args: argparse.Namespace) -> tuple[Config, Announcer]:
    """Cache and engines as the service sees them (configured lines pinned in every engine's voice); the player
    is never started: these commands do not play."""
    cfg = _config(args)
    player = build_player(cfg.audio)
    announcer = Announcer(engines=build_chain(cfg), cache=build_cache(cfg), player=player, voices=build_voices(cfg))
    announcer.pin_lines(cfg.all_lines())
    return cfg, announcer


def _pinned_cache(args: argparse.Namespace) -> tuple[Config, PhraseCache]:
    cfg, announcer = _announcer(args)
    return cfg, announcer.cache


def cmd_cache_warm(args: argparse.Namespace) -> int:
    cfg, announcer = _announcer(args)
    progress: dict = {}

    async def run() -> None:
        try:
            await warm(announcer, cfg.all_lines(), progress)
        finally:
            for chain in (announcer.engines, *announcer.voices.values()):
                await chain.aclose()

    started = time.monotonic()
    asyncio.run(run())
    for error in progress["errors"]:
        print(f"failed: {error}")
    ready = len(ready_ids(cfg, announcer))
    print(f"{ready}/{len(cfg.phrases)} lines ready offline ({progress['text']}; {time.monotonic() - started:.1f} s)")
    if cfg.languages:
        print("per language: " + ", ".join(_coverage(cfg, announcer, lang.code) for lang in cfg.languages))
    return EXIT_FAULT if progress["failed"] else 0


def _coverage(cfg: Config, announcer: Announcer, code: str) -> str:
    """ "de 11/12" (lines ready offline as heard in `code`), with how many are translated when not all are."""
    ready, done = len(ready_ids(cfg, announcer, code)), translated(cfg, code)
    missing = f" ({len(cfg.phrases) - done} untranslated)" if done < len(cfg.phrases) else ""
    return f"{code} {ready}/{len(cfg.phrases)}{missing}"


def cmd_cache_list(args: argparse.Namespace) -> int:
    _, cache = _pinned_cache(args)
    infos = sorted(cache.list(), key=lambda i: i.last_used, reverse=True)
    print(f"{'KEY':12}  {'ENGINE':8} {'SECONDS':>7} {'KB':>7}  {'PIN':3}  {'LAST USED':16}  TEXT")
    for i in infos:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.last_used))
        pin = "yes" if cache.is_pinned(i.key) else ""
        text = _printable(i.text if len(i.text) <= 60 else i.text[:57] + "...")  # from a file: may be anything
        engine = _printable(i.engine)
        print(f"{i.key[:12]}  {engine:8} {i.duration_s:7.1f} {i.length / 1000:7.0f}  {pin:3}  {when:16}  {text}")
    total = sum(i.length for i in infos)
    print(f"{len(infos)} entries, {total / 1e6:.1f} MB of audio, cap {cache.max_bytes / 1e6:.0f} MB")
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    _, cache = _pinned_cache(args)
    temps = cache.remove_stale_temps()
    ok, removed = cache.verify()
    target = _config(args).audio.loudness_lufs
    leveller = None if target is None else Leveller(target)
    # The engine's loudness, the entry's as stored (and played), its true peak, and any gain still applied.
    print(f"{'KEY':12}  {'ENGINE':8} {'MADE':>6} {'LUFS':>6} {'dBTP':>6} {'GAIN dB':>7}  TEXT")
    for info in ok:
        print(_loudness_row(info, leveller))
    for name, reason in removed:
        print(f"removed {name}: {_printable(reason)}")
    migrated = f", {cache.migrated} rewritten with block hashes, loudness and word times" if cache.migrated else ""
    print(
        f"{len(ok)} entries ok, {len(removed)} corrupt entries removed, {temps} leftover temp files removed{migrated}; "
        + (f"lines are played at {target:g} LUFS" if target is not None else "loudness matching is off")
    )
    return EXIT_FAULT if removed else 0


def _loudness_row(info: EntryInfo, leveller: Leveller | None) -> str:
    levelled = info.levelled
    level = levelled.loudness if levelled else None
    lufs = "-" if level is None or level.lufs is None else f"{level.lufs:6.1f}"
    peak = "-" if level is None or not math.isfinite(level.true_peak_db) else f"{level.true_peak_db:6.1f}"
    made = "-" if levelled is None or levelled.engine_lufs is None else f"{levelled.engine_lufs:6.1f}"
    gain = "-" if lufs == "-" or leveller is None else f"{leveller.gain_db(levelled, info.engine):+7.1f}"
    text = _printable(info.text if len(info.text) <= 50 else info.text[:47] + "...")  # from a file: may be anything
    return f"{info.key[:12]}  {_printable(info.engine):8} {made:>6} {lufs:>6} {peak:>6} {gain:>7}  {text}"


def cmd_cache_prune(args: argparse.Namespace) -> int:
    _, cache = _pinned_cache(args)
    temps = cache.remove_stale_temps()
    cap = int(args.max_mb * 1_000_000) if args.max_mb is not None else None
    evicted = cache.evict(cap)
    print(
        f"evicted {len(evicted)} entries, removed {temps} leftover temp files; "
        f"cache now {cache.total_bytes() / 1e6:.1f} MB"
    )
    return 0


def _mqtt(args: argparse.Namespace) -> MqttConfig:
    cfg = _config(args)
    if not cfg.mqtt.enabled:
        raise ConfigError([f"mqtt.host: not set in {args.config}; the fleet commands talk to the museum's broker"])
    return cfg.mqtt


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from kiosk.fleet.mqtt import fleet_status

    mqtt = _mqtt(args)
    speakers = asyncio.run(fleet_status(mqtt))
    if not speakers:
        print(f"no speakers under {mqtt.prefix}/ on {mqtt.host}:{mqtt.port}")
        return 0
    print(f"{'SPEAKER':20} {'ONLINE':7} {'LINES':>7}  {'LAST PRESS':16}  PROBLEMS")
    for device, seen in speakers.items():
        online = {"online": "yes", "offline": "no"}.get(seen["availability"], "?")
        lines, last, problem = _fleet_row(seen["status"])
        print(f"{_printable(device)[:20]:20} {online:7} {lines:>7}  {last:16}  {_printable(problem)}")
    return 0


def _fleet_row(status: dict) -> tuple[str, str, str]:
    """Lines ready, last press and problems from a speaker's retained status (untrusted: any field may be odd)."""
    ready, configured = status.get("lines_ready"), status.get("lines_configured")
    lines = f"{ready}/{configured}" if isinstance(ready, int) and isinstance(configured, int) else "?"
    pressed, last = status.get("last_press"), "-"
    if isinstance(pressed, int | float) and not isinstance(pressed, bool):  # localtime(None) would be now
        with contextlib.suppress(ValueError, OverflowError, OSError):
            last = time.strftime("%Y-%m-%d %H:%M", time.localtime(pressed))
    problems = status.get("problems")
    problems = [str(p) for p in problems if p] if isinstance(problems, list) else []
    if not problems:
        return lines, last, "none"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return lines, last, problems[0][:70] + more


def cmd_fleet_say(args: argparse.Namespace) -> int:
    from kiosk.fleet.mqtt import send_command
    from kiosk.fleet.topics import target_base

    mqtt = _mqtt(args)
    for what, name in (("--group", args.group), ("--device", args.device), ("PHRASE", args.phrase)):
        if name is not None and not PHRASE_ID.fullmatch(name):
            raise ConfigError([f"fleet say: {what} {name!r} is not a name (lowercase letters, digits, '-' and '_')"])
    base = target_base(mqtt.prefix, device=args.device, group=args.group)
    lead = in_step.lead_for(args.lead, together=args.device is None)  # stamped once connected (kiosk.fleet.fleet_cli)
    errors = asyncio.run(send_command(mqtt, base, "play", {"phrase": args.phrase, **({"at": lead} if lead else {})}))
    print(f"sent '{args.phrase}' to {base}/play" + (f", to start {lead.seconds:g} s later" if lead else ""))
    for error in errors:
        print(f"{_printable(error['device'])}: {_printable(str(error.get('error')))}", file=sys.stderr)
    return EXIT_FAULT if errors else 0


def _printable(text: str) -> str:
    """Text from the broker, safe for a terminal: no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text)
