"""A tiny, randomly initialised Wan 2.1-style I2V pipeline in the diffusers layout.

    python -m wan_i2v_job.tiny_model OUTPUT_DIR

Every component is built from a config (no weights or tokenizer files are downloaded):
a WanTransformer3DModel with image conditioning, an AutoencoderKLWan, a UMT5 text
encoder, a CLIP vision encoder with its image processor, a byte-level BPE tokenizer
trained on a few sentences, and the flow-matching scheduler. The dimensions are small
enough that two denoising steps of 5 frames at 64x64 take seconds on a CPU, and the
directory loads through the same ``WanImageToVideoPipeline.from_pretrained`` call as a
real Wan checkpoint. Its videos are noise: it tests the plumbing, not the model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

# A tiny model's sampling defaults (see wan_i2v_job.sampling): a test wants few steps.
TINY_SAMPLING = {"num_inference_steps": 2, "guidance_scale": 5.0}
_TOKENIZER_CORPUS = [
    "zoom in on the hills",
    "a slow pan across a mountain lake at sunrise, cinematic light",
    "the camera moves left past trees and a river",
]


# T5's special tokens (padding, end of sequence, unknown), by role.
_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def _tokenizer() -> Any:
    """A byte-level BPE tokenizer (any prompt encodes, none is unknown) from a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = list(_SPECIAL_TOKENS.values())
    tokenizer = Tokenizer(models.BPE(unk_token=_SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **_SPECIAL_TOKENS)


def build(output: Path, seed: int = 0) -> Path:
    """Write the pipeline to ``output`` (published by a rename, so never half-written)."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=8,
            intermediate_size=16,
            projection_dim=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    # The PIL processor: the job's env has no torchvision.
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        # Latents (z_dim) beside the conditioning: a 4-channel frame mask and the image latents.
        in_channels=4 + 4 + 4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        image_dim=8,
        rope_max_seq_len=64,
    )
    pipeline = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipeline.save_pretrained(staging)
    (staging / "gpuflow-sampling.json").write_text(json.dumps(TINY_SAMPLING, indent=2) + "\n")
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_i2v_job.tiny_model")
    parser.add_argument("output", type=Path, help="directory to write (replaced if present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    build(args.output.resolve(), args.seed)
    print(f"wrote a tiny Wan I2V pipeline to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
