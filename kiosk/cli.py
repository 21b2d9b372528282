"""Command line: `kiosk say`, `kiosk cache list|verify|prune`.

Expected faults (bad config, no key, server down, bad device) are one line on stderr and a non-zero exit:
1 for a fault at run time, 2 for a bad config or bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import time
from pathlib import Path

from kiosk import __version__, logs
from kiosk.alsa_output import has_sound_card, wav_file_device
from kiosk.announcer import Announcer
from kiosk.cache import PhraseCache
from kiosk.config import DEFAULT_CONFIG_PATH, Config, load_config, text_problem
from kiosk.errors import ConfigError, KioskError
from kiosk.service import build_cache, build_chain, build_player, open_announcer, run_service
from kiosk.warm import warm
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
        "verify", parents=[common], help="check every entry, remove corrupt ones and leftover temp files"
    ).set_defaults(func=cmd_cache_verify)
    prune = cache_commands.add_parser(
        "prune", parents=[common], help="evict least recently used ad-hoc lines down to the size cap"
    )
    prune.add_argument("--max-mb", type=float, help="size cap for this run (default: cache.max_mb)")
    prune.set_defaults(func=cmd_cache_prune)
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
    from kiosk.doctor import run_checks

    findings = run_checks(_config(args), str(args.config))
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
    trace = asyncio.run(_say(cfg, text))
    if args.trace:
        print(trace.to_json(), flush=True)
    if trace.error:
        raise KioskError(trace.error)
    return 0


def _text_to_say(args: argparse.Namespace, cfg: Config) -> str:
    if bool(args.text) == bool(args.phrase):
        raise ConfigError(["say: give either TEXT or --phrase ID"])
    if args.phrase:
        if args.phrase not in cfg.phrases:
            known = ", ".join(sorted(cfg.phrases)) or "none"
            raise ConfigError([f"say: no phrase '{args.phrase}' in {args.config} (known: {known})"])
        return cfg.phrases[args.phrase]
    problem = text_problem(args.text)
    if problem:
        raise ConfigError([f"say: {problem}"])
    return args.text


async def _say(cfg: Config, text: str):
    async with open_announcer(cfg) as announcer:
        return await announcer.say(text)


def _announcer(args: argparse.Namespace) -> tuple[Config, Announcer]:
    """Cache and engines as the service sees them (configured lines pinned in every engine's voice); the player
    is never started: these commands do not play."""
    cfg = _config(args)
    player = build_player(cfg.audio)
    announcer = Announcer(engines=build_chain(cfg), cache=build_cache(cfg), player=player)
    announcer.pin_lines(list(cfg.phrases.values()))
    return cfg, announcer


def _pinned_cache(args: argparse.Namespace) -> tuple[Config, PhraseCache]:
    cfg, announcer = _announcer(args)
    return cfg, announcer.cache


def cmd_cache_warm(args: argparse.Namespace) -> int:
    cfg, announcer = _announcer(args)
    progress: dict = {}

    async def run() -> None:
        try:
            await warm(announcer, list(cfg.phrases.values()), progress)
        finally:
            await announcer.engines.aclose()

    started = time.monotonic()
    asyncio.run(run())
    for error in progress["errors"]:
        print(f"failed: {error}")
    ready = sum(
        1 for text in cfg.phrases.values() if any(announcer.cache.contains(k) for k in announcer.keys_for(text))
    )
    print(f"{ready}/{len(cfg.phrases)} lines ready offline ({progress['text']}; {time.monotonic() - started:.1f} s)")
    return EXIT_FAULT if progress["failed"] else 0


def cmd_cache_list(args: argparse.Namespace) -> int:
    _, cache = _pinned_cache(args)
    infos = sorted(cache.list(), key=lambda i: i.last_used, reverse=True)
    print(f"{'KEY':12}  {'ENGINE':8} {'SECONDS':>7} {'KB':>7}  {'PIN':3}  {'LAST USED':16}  TEXT")
    for i in infos:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.last_used))
        pin = "yes" if cache.is_pinned(i.key) else ""
        text = i.text if len(i.text) <= 60 else i.text[:57] + "..."
        print(f"{i.key[:12]}  {i.engine:8} {i.duration_s:7.1f} {i.length / 1000:7.0f}  {pin:3}  {when:16}  {text}")
    total = sum(i.length for i in infos)
    print(f"{len(infos)} entries, {total / 1e6:.1f} MB of audio, cap {cache.max_bytes / 1e6:.0f} MB")
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    _, cache = _pinned_cache(args)
    temps = cache.remove_stale_temps()
    ok, removed = cache.verify()
    for name, reason in removed:
        print(f"removed {name}: {reason}")
    print(f"{ok} entries ok, {len(removed)} corrupt entries removed, {temps} leftover temp files removed")
    return EXIT_FAULT if removed else 0


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
