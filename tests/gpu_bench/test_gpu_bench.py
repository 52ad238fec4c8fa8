"""scripts/gpu-bench without a GPU: its whole flow on the CPU build (`--device cpu`: build,
`sdhost bench` through the same device-aware code paths, the section written into a copy of
docs/performance.md and replaced on a second run), and scripts/bench_section.py's placement
rules on their own. What only a GPU shows (CUDA timings, the fp16 jobs, the allocator's peak)
is described in docs/performance.md's introduction."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release"
SDHOST = TARGET / "sdhost"
sys.path.insert(0, str(ROOT / "scripts"))
import bench_section  # noqa: E402

DOC = """# Performance

Intro.

## 2026-12-03, build time

Old text.

## 2026-12-01, reference machine

```
## not a heading: inside a code block
```
Tables.
"""


def test_a_new_device_goes_first_and_the_same_device_is_replaced_in_place() -> None:
    first = bench_section.section("2026-12-04", "GPU", "NVIDIA H200", "scripts/gpu-bench", "a\n b\n")
    doc = bench_section.place(DOC, "GPU", "NVIDIA H200", first)
    headings = [doc.splitlines()[i] for i in bench_section.headings(doc.splitlines())]
    assert headings[0] == "## 2026-12-04, GPU: NVIDIA H200"
    assert "```\na\n b\n```" in doc and doc.startswith("# Performance\n\nIntro.\n\n## 2026-12-04")

    other = bench_section.section("2026-12-05", "GPU", "NVIDIA L4", "", "l4\n")
    doc = bench_section.place(doc, "GPU", "NVIDIA L4", other)
    again = bench_section.section("2026-12-06", "GPU", "NVIDIA H200", "", "new\n")
    doc = bench_section.place(doc, "GPU", "NVIDIA H200", again)
    headings = [doc.splitlines()[i] for i in bench_section.headings(doc.splitlines())]
    assert headings == ["## 2026-12-05, GPU: NVIDIA L4", "## 2026-12-06, GPU: NVIDIA H200",
                        "## 2026-12-03, build time", "## 2026-12-01, reference machine"]
    assert "a\n b" not in doc and "new" in doc and "l4" in doc and "Old text." in doc


def test_a_section_ends_at_the_next_heading_outside_code_blocks() -> None:
    doc = bench_section.place(DOC, "CPU", "X", bench_section.section("2026-12-01", "CPU", "X", "", "## inner\n"))
    replaced = bench_section.place(doc, "CPU", "X", bench_section.section("2026-12-02", "CPU", "X", "", "x\n"))
    assert "## inner" not in replaced and "## 2026-12-03, build time" in replaced


def test_the_cpu_flow_writes_the_table_into_a_copy_of_the_doc(tmp_path: Path) -> None:
    model = tmp_path / "tiny.safetensors"
    subprocess.run([str(SDHOST), "dev", "make-tiny-model", str(model)], check=True, capture_output=True)
    doc = tmp_path / "performance.md"
    shutil.copy(ROOT / "docs" / "performance.md", doc)
    original = doc.read_text()

    def run() -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(ROOT / "scripts" / "gpu-bench"), "--only", "clip", "--repeat", "1", "--doc", str(doc),
             "--", "--model", str(model), "--threads", "1", "--dtypes", "fp32,bf16"],
            cwd=tmp_path, env={**os.environ, "SDHOST_GPU_BENCH_DEVICE": "cpu"},
            capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    first = run()
    text = doc.read_text()
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    headings = re.findall(rf"^## {today}, CPU: .+$", text, flags=re.M)
    assert len(headings) == 1, headings
    section = text.split(headings[0], 1)[1].split("\n## ", 1)[0]
    # The table says what it measured: device, dtypes, both libtorch versions, attention. The
    # dtypes are named because the default leaves bf16 out on CPUs without bf16 instructions.
    assert re.search(r"^device cpu \(.+\), fp32, bf16$", section, flags=re.M), section
    assert re.search(r"^sdhost on libtorch 2\.13\.0, attention scaled_dot_product_attention; "
                     r"diffusers [\d.]+ on torch 2\.13\.0", section, flags=re.M), section
    assert "AttnProcessor2_0" in section
    assert re.search(r"clip fp32 \(2 chunks\) +\d+\.\d+ +\d+\.\d+", section), section
    assert re.search(r"clip bf16 \(2 chunks\) +\d+\.\d+ +\d+\.\d+", section), section
    assert "scripts/gpu-bench --device cpu --only clip --repeat 1" in section
    assert "clip fp32" in first.stdout
    # Everything else in the doc is kept as it was.
    start = text.index(headings[0])
    end = text.index("\n## ", start) + 1
    assert text[:start] + text[end:] == original

    run()
    assert len(re.findall(rf"^## {today}, CPU: ", doc.read_text(), flags=re.M)) == 1


def test_cuda_without_a_device_is_refused_before_any_work(tmp_path: Path) -> None:
    done = subprocess.run([str(SDHOST), "bench", "--device", "cuda:99", "--only", "clip"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "cuda:99" in done.stderr and "not available" in done.stderr, done.stderr
    done = subprocess.run([str(ROOT / "scripts" / "gpu-bench"), "--device", "tpu"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cpu, cuda or cuda:N" in done.stderr
