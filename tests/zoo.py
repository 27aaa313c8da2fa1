"""A zoo of Hugging Face architectures beyond examples/: tiny configs, random init, no downloads.

Each builder returns a ModelSpec (model, one example micro-batch, loss, ``batch(n, step)``)
built from a config object, small enough that tracing, measuring, planning and training
all of them takes about two minutes on two cores: one to three layers (or blocks) per
stack, hidden size 32 at most, sequences of 8 tokens, 16x16 images (MobileViT's 32x32), 400
audio samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import transformers as hf
from torch import nn

from autopipe import ModelSpec
from autopipe.spec import cross_entropy, generator

from .models import T5Pair
from .runtime_cases import Case

VOCAB, SEQ, BATCH = 96, 8, 2
"""Token models: vocabulary, sequence length and samples per micro-batch."""


def _tokens(model: nn.Module, name: str, *, seed: int = 0, shift: bool = True) -> ModelSpec:
    """A model that maps token ids (batch, SEQ) to logits (batch, SEQ, VOCAB), trained on the
    next token (``shift``) or, for an encoder, on the sequence reversed."""

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        tokens = torch.randint(0, VOCAB, (n * BATCH, SEQ + 1), generator=g)
        if shift:
            return (tokens[:, :-1],), tokens[:, 1:]
        return (tokens[:, :-1],), tokens[:, :-1].flip(1)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name=name)


def _classes(model: nn.Module, name: str, shape: tuple[int, ...], classes: int, *,
             seed: int = 0) -> ModelSpec:
    """A model that maps float inputs (batch, *shape) to class logits."""

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        x = torch.randn(n * BATCH, *shape, generator=g)
        return (x,), torch.randint(0, classes, (n * BATCH,), generator=g)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name=name)


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build()


# --- language models ---------------------------------------------------------------------------

_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                use_cache=False, tie_word_embeddings=False)


def mistral() -> ModelSpec:
    """Mistral: grouped-query attention, RoPE, SwiGLU, sliding-window attention mask."""
    cfg = hf.MistralConfig(**_DECODER, sliding_window=4)
    return _tokens(_seeded(lambda: hf.MistralForCausalLM(cfg)), "mistral")


def qwen2() -> ModelSpec:
    """Qwen2: a Llama with biases on the q, k, v projections; tied embeddings."""
    cfg = hf.Qwen2Config(**{**_DECODER, "tie_word_embeddings": True})
    return _tokens(_seeded(lambda: hf.Qwen2ForCausalLM(cfg)), "qwen2")


def gpt_neox() -> ModelSpec:
    """GPT-NeoX (Pythia): parallel attention and MLP residuals, partial rotary embeddings."""
    cfg = hf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.5,
                           max_position_embeddings=64, use_cache=False, hidden_dropout=0.0,
                           attention_dropout=0.0, use_parallel_residual=True)
    return _tokens(_seeded(lambda: hf.GPTNeoXForCausalLM(cfg)), "gpt-neox")


def falcon() -> ModelSpec:
    """Falcon: multi-query attention, parallel attention and MLP, ALiBi off (rotary)."""
    cfg = hf.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, multi_query=True, parallel_attn=True,
                          new_decoder_architecture=False, bias=False, alibi=False,
                          hidden_dropout=0.0, attention_dropout=0.0, use_cache=False)
    return _tokens(_seeded(lambda: hf.FalconForCausalLM(cfg)), "falcon")


def gemma2() -> ModelSpec:
    """Gemma 2: tanh soft-capping of the attention and final logits, alternating sliding-window
    and global attention, pre- and post-norms around each sublayer, a scaled embedding."""
    cfg = hf.Gemma2Config(**{**_DECODER, "tie_word_embeddings": True}, head_dim=8, sliding_window=4,
                          attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    return _tokens(_seeded(lambda: hf.Gemma2ForCausalLM(cfg)), "gemma2")


def bloom() -> ModelSpec:
    """BLOOM: ALiBi position biases (no position embeddings), an embedding LayerNorm, fused QKV."""
    cfg = hf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, hidden_dropout=0.0,
                         attention_dropout=0.0, use_cache=False)
    return _tokens(_seeded(lambda: hf.BloomForCausalLM(cfg)), "bloom")


def deberta() -> ModelSpec:
    """DeBERTa-v2 masked LM: disentangled attention (content-to-position and position-to-content
    terms over log-bucketed relative positions)."""
    cfg = hf.DebertaV2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, relative_attention=True, position_buckets=8,
                             pos_att_type=["p2c", "c2p"])
    return _tokens(_seeded(lambda: hf.DebertaV2ForMaskedLM(cfg)), "deberta", shift=False)


def distilbert() -> ModelSpec:
    """DistilBERT masked LM: post-norm encoder, tied output projection, no token types."""
    cfg = hf.DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                              max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    return _tokens(_seeded(lambda: hf.DistilBertForMaskedLM(cfg)), "distilbert", shift=False)


def modernbert() -> ModelSpec:
    """ModernBERT masked LM: layers alternating between sliding-window (local) and global
    attention, rotary embeddings with a base per kind, GeGLU, no biases."""
    cfg = hf.ModernBertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64,
                              local_attention=4, global_attn_every_n_layers=2, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    return _tokens(_seeded(lambda: hf.ModernBertForMaskedLM(cfg)), "modernbert", shift=False)


def funnel() -> ModelSpec:
    """Funnel Transformer masked LM: the encoder pools the sequence to half its length between
    blocks (attention over the pooled queries), the decoder upsamples it back and adds the
    first block's full-length output."""
    cfg = hf.FunnelConfig(vocab_size=VOCAB, block_sizes=[1, 1], num_decoder_layers=1, d_model=32,
                          n_head=4, d_head=8, d_inner=64, hidden_dropout=0.0, attention_dropout=0.0,
                          activation_dropout=0.0, max_position_embeddings=64)
    return _tokens(_seeded(lambda: hf.FunnelForMaskedLM(cfg)), "funnel", shift=False)


# --- mixture of experts -------------------------------------------------------------------------

_MOE = dict(num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.0,
            output_router_logits=False)


def mixtral() -> ModelSpec:
    """Mixtral: each token routed to 2 of 4 SwiGLU experts (data-dependent gather/scatter)."""
    cfg = hf.MixtralConfig(**_DECODER, **_MOE)
    return _tokens(_seeded(lambda: hf.MixtralForCausalLM(cfg)), "mixtral")


def qwen2_moe() -> ModelSpec:
    """Qwen2-MoE: routed experts plus a gated shared expert in every layer."""
    cfg = hf.Qwen2MoeConfig(**_DECODER, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=32, shared_expert_intermediate_size=64,
                            decoder_sparse_step=1, router_aux_loss_coef=0.0,
                            output_router_logits=False)
    return _tokens(_seeded(lambda: hf.Qwen2MoeForCausalLM(cfg)), "qwen2-moe")


# --- state space --------------------------------------------------------------------------------

def deepseek_v3() -> ModelSpec:
    """DeepSeek-V3: multi-head latent attention (queries and keys through low-rank
    projections, each key's rotary half written in place into an empty buffer) and experts
    routed within groups, with a shared expert and a first dense layer."""
    cfg = hf.DeepseekV3Config(**{**_DECODER, "num_hidden_layers": 3, "num_key_value_heads": 4},
                              moe_intermediate_size=16, n_shared_experts=1, n_routed_experts=4,
                              num_experts_per_tok=2, first_k_dense_replace=1, n_group=2,
                              topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                              qk_nope_head_dim=8, v_head_dim=8)
    return _tokens(_seeded(lambda: hf.DeepseekV3ForCausalLM(cfg)), "deepseek-v3")


def mamba() -> ModelSpec:
    """Mamba: selective state-space layers (a causal depthwise conv, then an input-dependent
    recurrence scanned token by token: no attention, no position embeddings)."""
    cfg = hf.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                         expand=2, conv_kernel=4, use_cache=False, use_mambapy=False)
    return _tokens(_seeded(lambda: hf.MambaForCausalLM(cfg)), "mamba")


def jamba() -> ModelSpec:
    """Jamba: a hybrid of Mamba and attention layers, every other layer's MLP a mixture of
    experts."""
    cfg = hf.JambaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_experts=2,
                         num_experts_per_tok=1, expert_layer_period=2, expert_layer_offset=1,
                         attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, mamba_d_conv=4,
                         mamba_expand=2, mamba_dt_rank=4, use_mamba_kernels=False, use_cache=False,
                         router_aux_loss_coef=0.0, output_router_logits=False,
                         tie_word_embeddings=False)
    return _tokens(_seeded(lambda: hf.JambaForCausalLM(cfg)), "jamba")


# --- encoder-decoder ----------------------------------------------------------------------------

class _Seq2Seq(nn.Module):
    """A Hugging Face encoder-decoder taking (encoder input, decoder ids) positionally,
    returning the logits; ``source`` names the encoder input (``input_ids``, ``input_features``)."""

    def __init__(self, model: nn.Module, source: str = "input_ids") -> None:
        super().__init__()
        self.model = model
        self.source = source

    def forward(self, source: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(**{self.source: source}, decoder_input_ids=decoder_ids).logits
        return out


def _reversal(model: nn.Module, name: str) -> ModelSpec:
    """An encoder-decoder over token ids that learns to write its source reversed."""

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        source = torch.randint(0, VOCAB, (n * BATCH, SEQ), generator=g)
        target = source.flip(1)
        decoder = torch.cat([torch.zeros_like(target[:, :1]), target[:, :-1]], dim=1)
        return (source, decoder), target

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name=name)


def t5() -> ModelSpec:
    """T5: encoder and decoder (cross-attention reads the encoder's output in every decoder
    layer), relative position buckets, tied embeddings."""
    return _reversal(_seeded(lambda: T5Pair(vocab=VOCAB)), "t5")


def bart() -> ModelSpec:
    """BART: one embedding shared by the encoder, the decoder and the output projection
    (three readers of one tied weight), learned positions, a final logits bias buffer."""
    cfg = hf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                        attention_dropout=0.0, activation_dropout=0.0, use_cache=False)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.BartForConditionalGeneration(cfg))), "bart")


# --- vision -------------------------------------------------------------------------------------

def vit() -> ModelSpec:
    """ViT: patch embedding (a strided conv), CLS token, pre-norm encoder, classifier on CLS."""
    cfg = hf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.ViTForImageClassification(cfg)), "vit", (3, 16, 16), 5)


def convnext() -> ModelSpec:
    """ConvNeXt: depthwise 7x7 convs, channels-last LayerNorm, layer scale, downsampling stages."""
    cfg = hf.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2,
                            num_stages=2, drop_path_rate=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.ConvNextForImageClassification(cfg)), "convnext",
                    (3, 16, 16), 5)


def resnet() -> ModelSpec:
    """Hugging Face ResNet: bottleneck blocks with batch norm (running statistics are trained
    state too), a max-pooled stem and strided shortcuts."""
    cfg = hf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="bottleneck", downsample_in_first_stage=False, num_labels=5)
    return _classes(_seeded(lambda: hf.ResNetForImageClassification(cfg)), "resnet",
                    (3, 16, 16), 5)


def swin() -> ModelSpec:
    """Swin: attention inside shifted windows (a roll of the feature map and a mask between
    windows), patch merging between stages."""
    cfg = hf.SwinConfig(image_size=16, patch_size=2, num_channels=3, embed_dim=8, depths=[1, 1],
                        num_heads=[2, 2], window_size=4, drop_path_rate=0.0, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.SwinForImageClassification(cfg)), "swin", (3, 16, 16), 5)


def segformer() -> ModelSpec:
    """SegFormer (MiT encoder): overlapping patch embeddings, attention over a spatially
    reduced key/value map, a depthwise conv inside each MLP."""
    cfg = hf.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], patch_sizes=[3, 3], strides=[2, 2],
                             num_attention_heads=[1, 2], mlp_ratios=[2, 2], hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, drop_path_rate=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.SegformerForImageClassification(cfg)), "segformer",
                    (3, 16, 16), 5)


def mobilevit() -> ModelSpec:
    """MobileViT: inverted-residual conv blocks with batch norm, and blocks that unfold the
    feature map into patches, run a transformer across them and fold it back."""
    cfg = hf.MobileViTConfig(image_size=32, patch_size=2, hidden_sizes=[16, 24, 32],
                             neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             classifier_dropout_prob=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.MobileViTForImageClassification(cfg)), "mobilevit",
                    (3, 32, 32), 5)


# --- vision and language ------------------------------------------------------------------------

IMAGE_TOKEN = VOCAB - 1
"""LLaVA's placeholder token: the image's 16 patch features replace these in the text."""


class _Llava(nn.Module):
    """LLaVA taking (input ids, pixel values) positionally and returning the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, pixel_values=pixel_values, use_cache=False).logits


def llava() -> ModelSpec:
    """LLaVA: a CLIP vision tower whose patch features, projected, take the place of the image
    tokens in a Llama's input (a masked scatter), checked against their count at run time
    (a data-dependent ``item`` in the exported graph)."""
    vision = dict(model_type="clip_vision_model", image_size=16, patch_size=4, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    cfg = hf.LlavaConfig(vision_config=vision, text_config=dict(_DECODER, model_type="llama"),
                         image_token_index=IMAGE_TOKEN, vision_feature_layer=-1)
    model = _seeded(lambda: _Llava(hf.LlavaForConditionalGeneration(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        text = torch.randint(0, IMAGE_TOKEN, (n * BATCH, SEQ + 1), generator=g)
        image = torch.full((n * BATCH, 16), IMAGE_TOKEN)
        ignored = torch.full((n * BATCH, 16), -100)  # no loss on the image's positions
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        return (torch.cat([image, text[:, :-1]], 1), pixels), torch.cat([ignored, text[:, 1:]], 1)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name="llava")


def _contrastive(output: Any, target: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss: each image's own text among the micro-batch's, and back."""
    logits = output["logits_per_image"]
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def clip() -> ModelSpec:
    """CLIP: a text and a vision transformer side by side, joined only by the similarity of
    their projected embeddings, trained contrastively within each micro-batch."""
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = hf.CLIPConfig(text_config=dict(tower, vocab_size=VOCAB, max_position_embeddings=SEQ),
                        vision_config=dict(tower, image_size=16, patch_size=4), projection_dim=16)
    model = _seeded(lambda: hf.CLIPModel(cfg))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        text = torch.randint(0, VOCAB, (n * BATCH, SEQ), generator=g)
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        return (text, pixels), torch.arange(BATCH).repeat(n)  # the i-th text goes with the i-th image

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_contrastive, batch=batch,
                     name="clip")


# --- speech -------------------------------------------------------------------------------------

def wav2vec2() -> ModelSpec:
    """Wav2Vec2: a strided conv feature extractor on raw audio, a convolutional relative
    position embedding, a transformer encoder, mean-pooled into an utterance classifier."""
    cfg = hf.Wav2Vec2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
                            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                            feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
                            classifier_proj_size=16, num_labels=5, do_stable_layer_norm=True,
                            feat_extract_norm="layer", apply_spec_augment=False)
    return _classes(_seeded(lambda: hf.Wav2Vec2ForSequenceClassification(cfg)), "wav2vec2",
                    (400,), 5)


def whisper() -> ModelSpec:
    """Whisper: a conv front end on log-mel frames, an audio encoder, and a text decoder that
    cross-attends to it (encoder-decoder speech recognition)."""
    cfg = hf.WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=1,
                           decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
                           max_target_positions=16, dropout=0.0, attention_dropout=0.0,
                           activation_dropout=0.0, use_cache=False, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                           suppress_tokens=None, begin_suppress_tokens=None)
    model = _seeded(lambda: _Seq2Seq(hf.WhisperForConditionalGeneration(cfg), "input_features"))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        features = torch.randn(n * BATCH, 8, 32, generator=g)  # 2 x max_source_positions frames
        text = torch.randint(3, VOCAB, (n * BATCH, SEQ + 1), generator=g)
        return (features, text[:, :-1]), text[:, 1:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name="whisper")


ZOO: dict[str, Callable[[], ModelSpec]] = {
    "t5": t5, "mixtral": mixtral, "qwen2-moe": qwen2_moe, "vit": vit, "convnext": convnext,
    "resnet": resnet, "wav2vec2": wav2vec2, "whisper": whisper, "gpt-neox": gpt_neox, "mistral": mistral, "qwen2": qwen2,
    "distilbert": distilbert, "falcon": falcon, "gemma2": gemma2, "bloom": bloom, "deberta": deberta,
    "bart": bart, "swin": swin, "segformer": segformer, "modernbert": modernbert, "funnel": funnel,
    "mamba": mamba, "jamba": jamba, "mobilevit": mobilevit, "llava": llava, "clip": clip,
    "deepseek-v3": deepseek_v3,
}
"""Every zoo model by name: a fresh, identically initialised copy per call."""


HASH_ORDERED = {"modernbert"}
"""Models whose traced node order depends on Python's string hashes: ModernBERT's forward
computes its rotary tables ``for layer_type in set(config.layer_types)``, so two processes
with different ``PYTHONHASHSEED`` trace the sliding and the global tables in either order,
and a rank refuses the plan (a graph fingerprint of another order). The autopipe commands
fix the seed ([Note: one hash seed] in ``autopipe.cli.main``), but this job plans in the test
process, so these are traced and split in one process only."""

ZOO_CASES = {c.name: c for c in (Case(name, 2, zoo=True, profile="measure", steps=2, microbatches=4)
                                 for name in ZOO if name not in HASH_ORDERED)}
"""Each zoo model measured on this CPU, planned into 2 stages (1F1B, 4 micro-batches) and
trained 2 steps (tests/runtime_worker.py runs them by name)."""

SPLIT_BACKWARD = ("t5", "whisper")
"""Zoo models also trained with ZBV (split backward), planned on an estimated profile (the
same cuts every run): their later stages send on values made from weights alone (T5's
relative position bias, Whisper's decoder positions), which torch's own split backward
left without gradient ([Note: split backward] in ``autopipe.runtime.split_backward``)."""
ZOO_CASES.update({c.name: c for c in (Case(name, 2, "zbv", zoo=True, steps=2, microbatches=4)
                                      for name in SPLIT_BACKWARD)})

OTHER_SCHEDULES = (Case("deepseek-v3", 2, "interleaved-1f1b", zoo=True, steps=2, microbatches=4),
                   Case("llava", 2, "dualpipev", zoo=True, steps=2, microbatches=4),
                   Case("mamba", 2, zoo=True, steps=2, microbatches=4, recompute="full"))
"""Zoo models also trained with the other planned schedules, on an estimated profile: 2 ranks
of 2 chunks each (interleaved 1F1B: DeepSeek-V3's latent attention and routed experts),
DualPipeV's overlapped pairs (LLaVA: a vision tower feeding a language model) and 1F1B with
every block recomputed (Mamba's selective scan). A sweep of the 26 models trained with 1F1B
above, each with all three, trained like one process (2026-12-02); these three keep it in the suite."""
ZOO_CASES.update({c.name: c for c in OTHER_SCHEDULES})
