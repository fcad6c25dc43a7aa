"""The CLIP text encoders' output for A1111-style prompts: weights and long prompts, for the
CLIP-conditioned UNet families (SD 1.x, 2.x, XL), as AUTOMATIC1111's `sd_hijack_clip.py` makes it.

A prompt is parsed (alice/engine/prompt_weights.py) and tokenized run by run; its tokens fill
chunks of the encoder's length less its start and end tokens (75 for CLIP's 77; the demo's CLIP
reads 16, so 14), a BREAK or a full chunk starting the next (a full chunk moves what follows its
last comma within reach into the next, as A1111's default "comma padding backtrack" of 20 does).
Each chunk is encoded alone, each token's hidden state multiplied by its weight, and the chunk
rescaled to its unweighted mean ("Original" emphasis, A1111's default); the chunks are joined
along the sequence. Every prompt and negative prompt of a pipeline call is padded with empty
chunks to the same number. SDXL's two encoders each chunk the prompt and are joined along the
features, as diffusers joins them; its pooled output is the first chunk's, unweighted (A1111
takes `zs[0].pooled`, before the emphasis).

Only a call whose prompts need it is encoded here: a prompt without syntax that fits the encoder
goes to diffusers as text, so it draws what it drew before, bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from alice.engine.prompt_weights import BREAK_WEIGHT, has_weight_syntax, parse_prompt_attention

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch
    from diffusers import DiffusionPipeline

logger = logging.getLogger("alice.engine")

A1111_CHUNK = 75  # tokens of prompt per chunk of CLIP's 77
A1111_COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`, in tokens of a 75-token chunk


@dataclass
class _Chunk:
    tokens: list[int]
    weights: list[float]


def token_chunks(pipe: DiffusionPipeline, tokenizer: Any, text: str) -> list[_Chunk]:
    """The prompt's tokens and weights in chunks of the tokenizer's length less start and end
    (the start, end and padding not added yet)."""
    length = chunk_length(tokenizer)
    backtrack = round(A1111_COMMA_BACKTRACK * length / A1111_CHUNK)
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[_Chunk] = []
    chunk = _Chunk([], [])
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk, last_comma = _Chunk([], []), -1

    for part, weight in parse_prompt_attention(text):
        if weight == BREAK_WEIGHT:
            next_chunk()
            continue
        for token in _ids(pipe, tokenizer, part):
            if token == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == length and last_comma != -1 and len(chunk.tokens) - last_comma <= backtrack:
                cut = last_comma + 1  # what follows the comma moves on, so no phrase is split
                moved = _Chunk(chunk.tokens[cut:], chunk.weights[cut:])
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                next_chunk()
                chunk = moved
            if len(chunk.tokens) == length:
                next_chunk()
            chunk.tokens.append(token)
            chunk.weights.append(weight)
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def chunk_length(tokenizer: Any) -> int:
    """Tokens of prompt one pass of the encoder reads: its length less start and end."""
    return int(tokenizer.model_max_length) - 2


def clip_encoders(pipe: DiffusionPipeline) -> list[tuple[Any, Any]]:
    """The pipeline's (tokenizer, text encoder) pairs: one for SD 1.x/2.x, two for SDXL."""
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if tokenizer is not None and encoder is not None]


def needs_own_encoding(pipe: DiffusionPipeline, texts: Sequence[str]) -> bool:
    """Whether any prompt of the call has weight syntax or is longer than the encoder reads
    (textual-inversion vectors counted): diffusers would read the brackets as words and cut it."""
    tokenizers = [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]
    return any(
        has_weight_syntax(text) or len(_ids(pipe, tokenizer, text)) > chunk_length(tokenizer)
        for text in texts for tokenizer in tokenizers
    )


def encode_prompts(
    pipe: DiffusionPipeline, prompts: Sequence[str], negatives: Sequence[str], clip_skip: int | None,
    zero_empty_negative: bool,
) -> dict[str, torch.Tensor]:
    """The pipeline's `prompt_embeds` and `negative_prompt_embeds` (with SDXL also the pooled
    ones) for the call's prompts, weighted and chunked. `clip_skip` counts as diffusers counts
    (layers skipped); `zero_empty_negative`: an empty negative prompt is zeros (SDXL's
    `force_zeros_for_empty_prompt`, as diffusers does when there is no negative prompt)."""
    import torch

    pairs = clip_encoders(pipe)
    xl = getattr(pipe, "text_encoder_2", None) is not None
    texts = [*prompts, *negatives]
    chunked = [[token_chunks(pipe, tokenizer, text) for text in texts] for tokenizer, _ in pairs]
    count = max(len(chunks) for per_encoder in chunked for chunks in per_encoder)
    embeds, pooled = [], []
    for index, text in enumerate(texts):
        per_encoder, first_pooled = [], None
        for (tokenizer, encoder), chunks_of in zip(pairs, chunked):
            chunks = chunks_of[index] + [_Chunk([], [])] * (count - len(chunks_of[index]))
            hidden, pooled_output = _encode(pipe, tokenizer, encoder, chunks, clip_skip, xl)
            per_encoder.append(hidden)
            first_pooled = pooled_output if pooled_output is not None else first_pooled
        embeds.append(torch.cat(per_encoder, dim=-1))
        pooled.append(first_pooled)
    if zero_empty_negative:
        for index, text in enumerate(negatives, start=len(prompts)):
            if not text:
                embeds[index] = torch.zeros_like(embeds[index])
                pooled[index] = torch.zeros_like(pooled[index]) if pooled[index] is not None else None
    n = len(prompts)
    dtype = pairs[-1][1].dtype
    args = {"prompt_embeds": torch.cat(embeds[:n]).to(dtype), "negative_prompt_embeds": torch.cat(embeds[n:]).to(dtype)}
    if xl:
        args["pooled_prompt_embeds"] = torch.cat(pooled[:n]).to(dtype)
        args["negative_pooled_prompt_embeds"] = torch.cat(pooled[n:]).to(dtype)
    logger.debug("encoded %d prompt(s) in %d chunk(s) each", len(texts), count)
    return args


def _ids(pipe: DiffusionPipeline, tokenizer: Any, text: str) -> list[int]:
    """Token ids of text, a textual-inversion embedding's name first spelled out as its vectors'
    tokens (diffusers' `maybe_convert_prompt`)."""
    if hasattr(pipe, "maybe_convert_prompt"):
        text = pipe.maybe_convert_prompt(text, tokenizer)
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def _encode(
    pipe: DiffusionPipeline, tokenizer: Any, encoder: Any, chunks: list[_Chunk], clip_skip: int | None, xl: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One prompt's chunks through one encoder: its hidden states joined along the sequence
    (1, chunks x length, features), and the first chunk's pooled output (SDXL's second encoder)."""
    import torch

    length = chunk_length(tokenizer)
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    device = pipe._execution_device
    hidden, pooled = [], None
    for chunk in chunks:
        # As diffusers pads (padding="max_length"): start, tokens, end, then the pad token (SD 2's
        # and SDXL's second tokenizer pad with "!", which A1111 also puts after the end).
        ids = torch.tensor([[start, *chunk.tokens, end] + [pad] * (length - len(chunk.tokens))], device=device)
        weights = torch.tensor([[1.0, *chunk.weights, 1.0] + [1.0] * (length - len(chunk.tokens))], device=device)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = (torch.arange(ids.shape[1], device=device) <= len(chunk.tokens) + 1).long()[None]
        output = encoder(ids, attention_mask=mask, output_hidden_states=xl or clip_skip is not None)
        if xl:  # diffusers' SDXL: the penultimate layer, further back by clip_skip
            z = output.hidden_states[-((clip_skip or 0) + 2)]
            if pooled is None and output[0].ndim == 2:
                pooled = output[0]
        elif clip_skip is not None:
            norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
            z = norm(output.hidden_states[-(clip_skip + 1)])
        else:
            z = output[0]
        hidden.append(_emphasised(z, weights))
    return torch.cat(hidden, dim=1), pooled


def _emphasised(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: each token's hidden state times its weight, then the whole
    rescaled to its former mean. All weights 1 leave it as it is; a weighting whose mean is zero
    (every weight 0) keeps no mean to restore and is left unscaled rather than divided by zero."""
    import torch

    if bool((weights == 1).all()):
        return z
    before = z.mean()
    weighted = z * weights.to(z.dtype)[..., None]
    after = weighted.mean()
    if after == 0 or not bool(torch.isfinite(after)):
        return weighted
    return weighted * (before / after)

