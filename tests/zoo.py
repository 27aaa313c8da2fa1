"""A zoo of Hugging Face architectures beyond examples/: tiny configs, random init, no downloads.

Each builder returns a ModelSpec (model, one example micro-batch, loss, ``batch(n, step)``)
built from a config object, small enough that tracing, measuring, planning and training
each takes seconds on two cores (about 8 minutes for all of them): one to three layers (or
blocks) per stack, hidden size 32 at most, sequences of 8 tokens, 16x16 images (a few 32x32,
LeViT's 128x128), 400 audio samples.

Architectures that torch.export cannot trace, found by the sweep of 2026-12-02 and left out:
DBRX (a Python loop over the experts a batch hits), Reformer (reversible layers: a custom
autograd Function whose forward runs under no_grad, refused by ``trace``), Autoformer (rolls
values by each top-k delay, ``int(index[i])``), Qwen2-VL (its vision attention splits
patches by ``lengths.tolist()``), Longformer (whether any token is global,
``is_index_global_attn.flatten().any().item()``, picks the attention path) and EnCodec (its
convs' padding is computed as a tensor, ``torch.ceil(n_frames)``, then used as a size);
and SEW-D, whose XSoftmax (a custom autograd Function) writes its softmax's output in place,
refused by ``trace``. The sweep of 2026-12-03 left out Idefics3 and SmolVLM (a boolean index
keeps the real images: a shape that depends on the data), ViLT (``interpolate`` to sizes read
with ``.item()``) and Mistral 3 (image features split by sizes computed as tensors), each
refused naming the node or the model's line; and Chameleon, which trains like one process but
whose VQ image tokenizer (argmin codes) leaves most of its parameters without a gradient.
The sweep of 2026-12-05 left out Switch Transformers and NLLB-MoE (a Python loop over the
experts a batch hits, as DBRX; their routers' cast of the router layer to its own dtype in
every forward, which export refused before, now traces: [Note: a module's own dtype inside
forward]) and FSMT (``if not padding_mask.any()`` picks the mask). The later sweep of 2026-12-05 left
out Nystromformer (traced, its attention mask comes out (batch, 1, seq, seq), which its landmark
attention's (batch, heads, landmarks, seq) scores cannot be added to), JetMoE (its mixture of
attention heads splits tokens by expert counts: a shape that depends on the data) and
Conditional DETR (``if not torch.isfinite(hidden_states).all()``), each refused naming the node or
the model's line. The third sweep of 2026-12-05 left out BLT (its entropy patcher cuts bytes into
patches of data-dependent lengths: a shape that depends on the data) and LED (Longformer's
attention, ``if is_global_attn:``), each refused naming the node or the model's line. The fourth
sweep of 2026-12-05 left out VITS (its predicted durations set the waveform's length,
``torch.arange(predicted_lengths.max())``: a shape that depends on the data), FastSpeech 2 Conformer
(its length regulator, ``if duration_labels.sum() == 0:``), SuperPoint (it keeps the keypoints
scoring above a threshold, ``if k >= len(keypoints):``) and Qwen2-Audio (its audio features cut to
each clip's length, ``audio_features[audio_features_mask]``: a shape that depends on the data), each
refused naming the node or the model's line; OLMo Hybrid and RT-DETR split anywhere and train like
one process but are not kept, as each one's split test took a minute or more (OLMo Hybrid's gated
DeltaNet solves its 64-row chunks row by row as Qwen3-Next's does; RT-DETR's 27 batch norms each
add a cut before their counter's in-place update). The sweep of 2026-12-08 left out X-MOD (each
sample's language adapter picked by a boolean index, ``lang_ids == lang``: a shape that depends on
the data) and Mimi (each conv padded by ``.item()`` of a padding computed from its int64 buffers,
``modeling_mimi.py:378``), each refused naming the node or the line; CLIPSeg trains like one process
but runs its CLIP towers under ``no_grad``, so fewer than half its parameters train, which the
comparison refuses; ZoeDepth's losses and parameters equal one process's but fewer than half of them
moved (84 of 193 in two eager SGD steps too: the rest's gradients round away), and at 12 s its split
test was too slow to keep, as were the passing Qwen3.5 (gated DeltaNet, 11 s, as Qwen3-Next's) and
BridgeTower (8 s); 45 more that passed (Qwen3, OLMo 2 and 3, ERNIE 4.5, GLM-4, Cohere 2, Phi,
StableLM, Starcoder2, Nemotron, XGLM, EXAONE 4, Helium, VaultGemma, BitNet, MiniCPM3,
GraniteMoeShared, LFM2-MoE, CodeGen, Persimmon, BioGPT, CTRL, GPT-Neo, GPT-J, mBART, Marian,
Blenderbot, SeamlessM4T text-to-text, ELECTRA, RoBERTa-PreLayerNorm, RemBERT, RoFormer, LayoutLM,
TAPAS, DeiT, DINOv2 with registers, I-JEPA, PVT, GLPN, Depth Anything, TextNet, HGNet-V2, AIMv2,
ViTPose, BLIP; OLMo 3 traces in an order that follows the hash seed, as Gemma 3) are variants of
families kept here, left out for the suite's time.
"""

from __future__ import annotations

import functools
import itertools
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
    return _text_image_pairs(_seeded(lambda: hf.CLIPModel(cfg)), "clip", _contrastive)


def _text_image_pairs(model: nn.Module, name: str, loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]) -> ModelSpec:
    """A two-tower model taking (token ids, pixels) by position, trained on the i-th text
    going with the i-th image of each micro-batch."""

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        text = torch.randint(0, VOCAB, (n * BATCH, SEQ), generator=g)
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        return (text, pixels), torch.arange(BATCH).repeat(n)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=loss_fn, batch=batch, name=name)


# --- speech -------------------------------------------------------------------------------------

_AUDIO = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
              num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, hidden_dropout=0.0,
              attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
              mask_time_prob=0.0, classifier_proj_size=16, num_labels=5, apply_spec_augment=False)
"""Wav2Vec2's and HuBERT's shared config: a 2-layer conv feature extractor over 400 samples."""


def wav2vec2() -> ModelSpec:
    """Wav2Vec2: a strided conv feature extractor on raw audio, a convolutional relative
    position embedding, a transformer encoder, mean-pooled into an utterance classifier."""
    cfg = hf.Wav2Vec2Config(**_AUDIO, do_stable_layer_norm=True, feat_extract_norm="layer")
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


# --- more decoders, experts and recurrences (added by the sweep of 2026-12-02) ------------------

def opt() -> ModelSpec:
    """OPT: learned positions offset by 2 (computed from the attention mask's cumsum), pre-LN
    decoder, ReLU MLP."""
    cfg = hf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                       dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
                       use_cache=False, tie_word_embeddings=False)
    return _tokens(_seeded(lambda: hf.OPTForCausalLM(cfg)), "opt")


def phi3() -> ModelSpec:
    """Phi-3: fused qkv and gate-up projections, RoPE, a sliding window."""
    cfg = hf.Phi3Config(**{**_DECODER, "num_key_value_heads": 4}, sliding_window=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                        pad_token_id=0)
    return _tokens(_seeded(lambda: hf.Phi3ForCausalLM(cfg)), "phi3")


def gemma3() -> ModelSpec:
    """Gemma 3 text: q/k norms, local (sliding, own RoPE base) and global layers, pre- and
    post-norms, a scaled embedding."""
    cfg = hf.Gemma3TextConfig(**{**_DECODER, "tie_word_embeddings": True}, head_dim=8,
                              sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    return _tokens(_seeded(lambda: hf.Gemma3ForCausalLM(cfg)), "gemma3")


def qwen3_moe() -> ModelSpec:
    """Qwen3-MoE: q/k norms, every layer's MLP routed to 2 of 4 experts."""
    cfg = hf.Qwen3MoeConfig(**_DECODER, head_dim=8, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=32, decoder_sparse_step=1,
                            router_aux_loss_coef=0.0, output_router_logits=False)
    return _tokens(_seeded(lambda: hf.Qwen3MoeForCausalLM(cfg)), "qwen3-moe")


def phimoe() -> ModelSpec:
    """PhiMoE: its sparse mixer samples the router in training, with jitter on the router's
    logits and input, and dropout on the attention weights: every draw lined up with one
    process ([Note: random draws per node and micro-batch] in ``autopipe.runtime.draws``)."""
    cfg = hf.PhimoeConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.1,
                          input_jitter_noise=0.1, attention_dropout=0.1, router_aux_loss_coef=0.0,
                          output_router_logits=False)
    return _tokens(_seeded(lambda: hf.PhimoeForCausalLM(cfg)), "phimoe")


def olmoe() -> ModelSpec:
    """OLMoE: q/k norms over the whole projection, 2 of 4 experts per token."""
    cfg = hf.OlmoeConfig(**_DECODER, num_experts=4, num_experts_per_tok=2,
                         router_aux_loss_coef=0.0, output_router_logits=False)
    return _tokens(_seeded(lambda: hf.OlmoeForCausalLM(cfg)), "olmoe")


def granitemoe() -> ModelSpec:
    """GraniteMoE: experts in one parallel linear (a grouped matmul by index), scaled
    embeddings, residuals and logits."""
    cfg = hf.GraniteMoeConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2,
                              router_aux_loss_coef=0.0, output_router_logits=False,
                              embedding_multiplier=2.0, residual_multiplier=0.5,
                              logits_scaling=2.0, attention_multiplier=0.25)
    return _tokens(_seeded(lambda: hf.GraniteMoeForCausalLM(cfg)), "granitemoe")


def mamba2() -> ModelSpec:
    """Mamba-2: multi-head state-space duality, scanned in chunks (torch path, no kernels)."""
    cfg = hf.Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_heads=8, head_dim=8, state_size=8,
                          num_hidden_layers=2, expand=2, n_groups=2, conv_kernel=4, chunk_size=4,
                          use_cache=False, tie_word_embeddings=False)
    return _tokens(_seeded(lambda: hf.Mamba2ForCausalLM(cfg)), "mamba2")


def falcon_mamba() -> ModelSpec:
    """FalconMamba: Mamba with RMS-normalised B, C and time steps."""
    cfg = hf.FalconMambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                               expand=2, conv_kernel=4, use_cache=False, use_mambapy=False)
    return _tokens(_seeded(lambda: hf.FalconMambaForCausalLM(cfg)), "falcon-mamba")


def recurrent_gemma() -> ModelSpec:
    """RecurrentGemma (Griffin): real-gated linear recurrent units with a causal conv, and a
    local-attention layer."""
    cfg = hf.RecurrentGemmaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  lru_width=32, attention_window_size=4, conv1d_width=4,
                                  block_types=("recurrent", "attention", "recurrent"),
                                  use_cache=False, partial_rotary_factor=0.5)
    return _tokens(_seeded(lambda: hf.RecurrentGemmaForCausalLM(cfg)), "recurrent-gemma")


def zamba2() -> ModelSpec:
    """Zamba2: Mamba-2 layers with a shared attention block (and its LoRA adapters) applied
    to the concatenation of the hidden state and the original embeddings."""
    cfg = hf.Zamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
                          layers_block_type=["mamba", "hybrid", "mamba"], mamba_d_state=8,
                          mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, n_mamba_heads=4,
                          chunk_size=4, use_mamba_kernels=False, intermediate_size=64,
                          num_attention_heads=4, num_key_value_heads=4, num_mem_blocks=1,
                          use_shared_attention_adapter=True, adapter_rank=4, use_mem_rope=True,
                          max_position_embeddings=64, use_cache=False, pad_token_id=0)
    return _tokens(_seeded(lambda: hf.Zamba2ForCausalLM(cfg)), "zamba2")


def rwkv() -> ModelSpec:
    """RWKV (v4): token shift and the WKV linear-attention recurrence (torch loop, no kernel)."""
    cfg = hf.RwkvConfig(vocab_size=VOCAB, context_length=SEQ, hidden_size=32, num_hidden_layers=2,
                        attention_hidden_size=32, intermediate_size=64, use_cache=False,
                        rescale_every=0)
    return _tokens(_seeded(lambda: hf.RwkvForCausalLM(cfg)), "rwkv")


def xlnet() -> ModelSpec:
    """XLNet: bidirectional attention over sinusoidal relative positions (content and position
    biases), no memory; its segment embeddings and ``mask_emb`` go unread without
    ``token_type_ids`` and ``target_mapping`` ([Note: unread parameters])."""
    cfg = hf.XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=64,
                         dropout=0.0, mem_len=None, use_mems_train=False, use_mems_eval=False,
                         tie_word_embeddings=True, pad_token_id=0)
    return _tokens(_seeded(lambda: hf.XLNetLMHeadModel(cfg)), "xlnet", shift=False)


# --- more encoder-decoders, speech and vision (added by the sweep of 2026-12-02) ----------------

_S2S = dict(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=0)


def pegasus() -> ModelSpec:
    """Pegasus: sinusoidal position embeddings (a fixed table), pre-norm encoder and decoder
    with final layer norms, embeddings shared with the output projection."""
    cfg = hf.PegasusConfig(**_S2S)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.PegasusForConditionalGeneration(cfg))), "pegasus")


def m2m100() -> ModelSpec:
    """M2M100: sinusoidal positions offset past the padding index, computed from the token ids
    (a cumulative sum over the non-padding mask), scaled embeddings."""
    cfg = hf.M2M100Config(**_S2S, encoder_layerdrop=0.0, decoder_layerdrop=0.0)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.M2M100ForConditionalGeneration(cfg))), "m2m100")


def longt5() -> ModelSpec:
    """LongT5: the encoder's transient-global attention (local blocks of tokens plus globally
    aggregated block summaries, with relative position buckets for both)."""
    cfg = hf.LongT5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                          num_decoder_layers=1, num_heads=4, use_cache=False, dropout_rate=0.0,
                          relative_attention_num_buckets=8, relative_attention_max_distance=16,
                          encoder_attention_type="transient-global", local_radius=2,
                          global_block_size=2, decoder_start_token_id=0, pad_token_id=0)
    return _reversal(_seeded(lambda: _MaskedSeq2Seq(hf.LongT5ForConditionalGeneration(cfg))), "longt5")


class _MaskedSeq2Seq(_Seq2Seq):
    """An encoder-decoder given an all-ones attention mask: LongT5's stack makes one itself
    only outside torch.export (``is_torchdynamo_compiling``), and its transient-global
    attention without a mask concatenates a (1, ...) bias with a (batch, ...) one."""

    def forward(self, source: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(**{self.source: source}, attention_mask=torch.ones_like(source),
                                       decoder_input_ids=decoder_ids).logits
        return out


def speech2text() -> ModelSpec:
    """Speech2Text: a strided 1-d conv subsampler (GLU) over filterbank frames, sinusoidal
    positions, an encoder-decoder transformer."""
    cfg = hf.Speech2TextConfig(**{**_S2S, "max_position_embeddings": 16}, max_source_positions=16,
                               max_target_positions=16, input_feat_per_channel=8, input_channels=1,
                               num_conv_layers=2, conv_kernel_sizes=(5, 5), conv_channels=16,
                               encoder_layerdrop=0.0, decoder_layerdrop=0.0)
    model = _seeded(lambda: _Seq2Seq(hf.Speech2TextForConditionalGeneration(cfg), "input_features"))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        features = torch.randn(n * BATCH, 32, 8, generator=g)  # 32 frames of 8 filterbanks
        text = torch.randint(3, VOCAB, (n * BATCH, SEQ + 1), generator=g)
        return (features, text[:, :-1]), text[:, 1:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name="speech2text")


def hubert() -> ModelSpec:
    """HuBERT: Wav2Vec2's conv feature extractor and conv position embedding, post-norm
    encoder (group-norm feature extractor), mean-pooled into an utterance classifier."""
    cfg = hf.HubertConfig(**_AUDIO, final_dropout=0.0, do_stable_layer_norm=False,
                          feat_extract_norm="group")
    return _classes(_seeded(lambda: hf.HubertForSequenceClassification(cfg)), "hubert", (400,), 5)


def speecht5() -> ModelSpec:
    """SpeechT5 speech-to-text: a wav2vec2-style conv prenet on raw audio, relative position
    bias in the encoder, a text decoder with scaled sinusoidal positions cross-attending."""
    cfg = hf.SpeechT5Config(vocab_size=VOCAB, hidden_size=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=4, decoder_attention_heads=4,
                            encoder_ffn_dim=64, decoder_ffn_dim=64, conv_dim=(16, 16),
                            conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=4, hidden_dropout=0.0,
                            attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                            speech_decoder_prenet_dropout=0.0, positional_dropout=0.0,
                            encoder_layerdrop=0.0, decoder_layerdrop=0.0, mask_time_prob=0.0,
                            apply_spec_augment=False, max_speech_positions=64,
                            max_text_positions=64, encoder_max_relative_position=16,
                            use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            decoder_start_token_id=1)
    return _transcribe(_seeded(lambda: _Seq2Seq(hf.SpeechT5ForSpeechToText(cfg), "input_values")), "speecht5",
                       samples=400, first_token=3)


def _transcribe(model: nn.Module, name: str, *, samples: int, first_token: int) -> ModelSpec:
    """A speech-to-text encoder-decoder taking (raw audio, decoder ids) by position, trained
    on the next token (ids from ``first_token`` on, clear of the special ones)."""

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        audio = torch.randn(n * BATCH, samples, generator=g)
        text = torch.randint(first_token, VOCAB, (n * BATCH, SEQ + 1), generator=g)
        return (audio, text[:, :-1]), text[:, 1:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch, name=name)


def beit() -> ModelSpec:
    """BEiT: a relative position bias table per layer (indexed by a fixed pairwise index
    buffer, CLS rows and columns apart), layer scale, mean pooling of the patch tokens."""
    cfg = hf.BeitConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        drop_path_rate=0.0, use_relative_position_bias=True,
                        use_absolute_position_embeddings=False, use_mean_pooling=True,
                        layer_scale_init_value=0.1, num_labels=5)
    return _classes(_seeded(lambda: hf.BeitForImageClassification(cfg)), "beit", (3, 16, 16), 5)


def dinov2() -> ModelSpec:
    """DINOv2: position embeddings interpolated (bicubic) to the image's patch grid, layer
    scale, a classifier on the CLS token joined with the mean patch token."""
    cfg = hf.Dinov2Config(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          drop_path_rate=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.Dinov2ForImageClassification(cfg)), "dinov2", (3, 16, 16), 5)


def swinv2() -> ModelSpec:
    """Swin V2: scaled cosine attention with a learned per-head temperature, a continuous
    position bias (an MLP over log-spaced relative coordinates), post-norm residuals."""
    cfg = hf.Swinv2Config(image_size=16, patch_size=2, num_channels=3, embed_dim=8, depths=[1, 1],
                          num_heads=[2, 2], window_size=4, drop_path_rate=0.0,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.Swinv2ForImageClassification(cfg)), "swinv2", (3, 16, 16), 5)


def efficientnet() -> ModelSpec:
    """EfficientNet: mobile inverted bottlenecks with squeeze-and-excitation, depthwise convs
    with "same" padding (a zero pad before the strided ones), batch norm, swish."""
    # hidden_dim is the top conv's width, round_filters(1280) = 128 at width 0.1
    cfg = hf.EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.1,
                                hidden_dim=128, dropout_rate=0.0, drop_connect_rate=0.0,
                                num_labels=5)

    def build() -> nn.Module:
        model = hf.EfficientNetForImageClassification(cfg)
        # Hugging Face draws the batch norms' scales from N(0, 0.02) like its weights: 17 of
        # them in a row shrink the signal (and every gradient below) to about 1e-37
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
        return model

    return _classes(_seeded(build), "efficientnet", (3, 32, 32), 5)


def regnet() -> ModelSpec:
    """RegNet (Y): grouped-conv bottlenecks with squeeze-and-excitation, batch norm."""
    cfg = hf.RegNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          groups_width=8, layer_type="y", num_labels=5)
    return _classes(_seeded(lambda: hf.RegNetForImageClassification(cfg)), "regnet", (3, 16, 16), 5)


def mobilenet_v2() -> ModelSpec:
    """MobileNetV2: inverted residuals with linear bottlenecks, ReLU6, batch norm, TensorFlow
    "same" padding computed from the input size in every conv."""
    cfg = hf.MobileNetV2Config(image_size=32, depth_multiplier=0.25, min_depth=8, finegrained_output=False,
                               classifier_dropout_prob=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.MobileNetV2ForImageClassification(cfg)), "mobilenet-v2",
                    (3, 32, 32), 5)


# --- time series --------------------------------------------------------------------------------

def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target)


class _PatchTST(nn.Module):
    """PatchTST for prediction taking the past values and returning the forecast."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, past_values: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(past_values=past_values).prediction_outputs
        return out


def patchtst() -> ModelSpec:
    """PatchTST: each channel's series cut into overlapping patches (``unfold``), instance
    normalised, a transformer over the patches, a flatten head forecasting 4 steps."""
    cfg = hf.PatchTSTConfig(num_input_channels=2, context_length=16, prediction_length=4,
                            patch_length=4, patch_stride=2, d_model=16, num_hidden_layers=2,
                            num_attention_heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.0,
                            positional_dropout=0.0, path_dropout=0.0, ff_dropout=0.0,
                            head_dropout=0.0, scaling="std", loss="mse")
    model = _seeded(lambda: _PatchTST(hf.PatchTSTForPrediction(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        series = torch.randn(n * BATCH, 20, 2, generator=g).cumsum(1)
        return (series[:, :16],), series[:, 16:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_mse, batch=batch,
                     name="patchtst")


# --- latent bottleneck --------------------------------------------------------------------------

def perceiver() -> ModelSpec:
    """Perceiver IO masked LM: byte embeddings with learned positions cross-attended by a
    small learned latent array, self-attention among the latents only, and a decoder whose
    per-position queries cross-attend back to the latents, logits through the tied embedding."""
    cfg = hf.PerceiverConfig(num_latents=4, d_latents=16, d_model=32, num_blocks=1,
                             num_self_attends_per_block=2, num_self_attention_heads=2,
                             num_cross_attention_heads=2, vocab_size=VOCAB,
                             max_position_embeddings=SEQ, attention_probs_dropout_prob=0.0)
    return _tokens(_seeded(lambda: hf.PerceiverForMaskedLM(cfg)), "perceiver", shift=False)


# --- detection ----------------------------------------------------------------------------------

class _Detr(nn.Module):
    """DETR taking pixel values and returning (class logits, predicted boxes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.pred_boxes


DETR_CLASSES, DETR_QUERIES, DETR_OBJECTS = 3, 4, 2


def _set_loss(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """DETR's set loss, small: each image's objects (rows of class, cx, cy, w, h) matched to
    the queries by the cheapest assignment (all of them tried: 12 for 2 objects among 4
    queries), cross-entropy against the matched classes ("no object" for the rest) plus the
    matched boxes' L1 distance."""
    logits, boxes = output
    losses = []
    for lg, bx, objects in zip(logits, boxes, target):
        classes, wanted = objects[:, 0].long(), objects[:, 1:]
        prob = lg.softmax(-1)
        cost = (-prob[:, classes] + torch.cdist(bx, wanted, p=1)).detach()  # (queries, objects)
        best = min(itertools.permutations(range(DETR_QUERIES), DETR_OBJECTS),
                   key=lambda qs: float(sum(cost[q, o] for o, q in enumerate(qs))))
        chosen = torch.tensor(best)
        labels = torch.full((DETR_QUERIES,), DETR_CLASSES)  # the last logit: no object
        labels[chosen] = classes
        losses.append(F.cross_entropy(lg, labels) + F.l1_loss(bx[chosen], wanted))
    return torch.stack(losses).mean()


def detr() -> ModelSpec:
    """DETR: a ResNet backbone (frozen batch norm: statistics and affine as buffers), sine
    position embeddings from the pixel mask, an encoder-decoder whose learned object queries
    attend to the feature map, class and box heads; a set loss (matching, then cross-entropy
    and box L1) on the last stage."""
    backbone = hf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                               layer_type="basic", out_features=["stage2"])
    cfg = hf.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                        backbone_config=backbone, num_queries=DETR_QUERIES, d_model=32,
                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        encoder_layerdrop=0.0, decoder_layerdrop=0.0, auxiliary_loss=False,
                        num_labels=DETR_CLASSES)
    model = _seeded(lambda: _Detr(hf.DetrForObjectDetection(cfg)))
    # in training mode each encoder layer clamps its output if any of it is not finite, a
    # branch on the data that torch.export cannot trace; with no dropout, evaluation mode
    # differs in nothing else
    for layer in model.model.model.encoder.layers:
        layer.eval()
    return ModelSpec(model=model, example_inputs=_detections(1)[0], loss_fn=_set_loss, batch=_detections,
                     name="detr")


# --- architectures added by the sweep of 2026-12-02 (c) -----------------------------------------

def qwen3_next() -> ModelSpec:
    """Qwen3-Next: gated DeltaNet linear attention (a causal conv, then the delta rule scanned
    in chunks, torch path) interleaved with gated full attention; every MLP routed to 2 of 4
    experts plus a gated shared expert."""
    cfg = hf.Qwen3NextConfig(**_DECODER, head_dim=8, linear_conv_kernel_dim=4,
                             linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                             linear_num_value_heads=4, num_experts=4, num_experts_per_tok=2,
                             moe_intermediate_size=16, shared_expert_intermediate_size=32,
                             decoder_sparse_step=1, router_aux_loss_coef=0.0,
                             output_router_logits=False,
                             layer_types=["linear_attention", "full_attention"])
    return _tokens(_seeded(lambda: hf.Qwen3NextForCausalLM(cfg)), "qwen3-next")


def gemma3n() -> ModelSpec:
    """Gemma 3n text: AltUp (2 predicted streams, one active, corrected after each layer),
    per-layer embeddings (their own token table, projected and gated into every layer),
    Laurel low-rank residuals, a Gaussian top-k activation sparsity in the first MLP, the
    last layer reusing an earlier layer's keys and values, soft-capped logits. AltUp's
    coefficient clip is off: in training it clamps ``weight.data`` in place inside forward,
    which torch.export lifts as a fake constant and refuses. No padding token: its zero
    embedding stays zero in the active stream (the AltUp coefficients start at zero), and
    the final ``mean(x ** 2) ** 0.5`` of zero has a NaN gradient, in eager PyTorch too."""
    cfg = hf.Gemma3nTextConfig(**{**_DECODER, "num_hidden_layers": 3, "tie_word_embeddings": True},
                               head_dim=8, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                               vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8,
                               altup_num_inputs=2, num_kv_shared_layers=1,
                               laurel_rank=4, activation_sparsity_pattern=[0.95, 0.0, 0.0],
                               pad_token_id=None)
    object.__setattr__(cfg, "altup_coef_clip", None)  # the strict config refuses None
    return _tokens(_seeded(lambda: hf.Gemma3nForCausalLM(cfg)), "gemma3n")


def gpt_oss() -> ModelSpec:
    """GPT-OSS: a learned attention sink per head (an extra logit in every softmax),
    alternating sliding and full attention, YaRN RoPE, biased attention, experts routed
    2 of 4 with a clamped SwiGLU (``gate * sigmoid(alpha * gate)``) in batched weights."""
    cfg = hf.GptOssConfig(**_DECODER, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                          sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                          router_aux_loss_coef=0.0, output_router_logits=False)
    return _tokens(_seeded(lambda: hf.GptOssForCausalLM(cfg)), "gpt-oss")


def llama4() -> ModelSpec:
    """Llama 4 text: chunked causal attention (4-token chunks) in RoPE layers with L2-normed
    q/k, a global no-RoPE layer with position-dependent query temperature, every MLP routed
    to 1 of 4 experts (sigmoid-scaled inputs) plus a shared expert, and a dense layer."""
    cfg = hf.Llama4TextConfig(**{**_DECODER, "num_hidden_layers": 3}, head_dim=8,
                              intermediate_size_mlp=64, num_local_experts=4, num_experts_per_tok=1,
                              interleave_moe_layer_step=2, no_rope_layers=[1, 1, 0],
                              attention_chunk_size=4, floor_scale=4, attn_scale=0.1,
                              layer_types=["chunked_attention", "chunked_attention", "full_attention"],
                              router_aux_loss_coef=0.0, output_router_logits=False, pad_token_id=None)
    return _tokens(_seeded(lambda: hf.Llama4ForCausalLM(cfg)), "llama4")


def bamba() -> ModelSpec:
    """Bamba: Mamba-2 layers (chunked state-space scan, torch path) and a RoPE attention
    layer, each followed by a SwiGLU MLP."""
    cfg = hf.BambaConfig(**{**_DECODER, "num_hidden_layers": 3}, attn_layer_indices=[1],
                         mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8,
                         mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=4, pad_token_id=0)
    return _tokens(_seeded(lambda: hf.BambaForCausalLM(cfg)), "bamba")


def lfm2() -> ModelSpec:
    """LFM2: gated short causal convolutions (kernel 3, input- and output-gated) in most layers,
    grouped-query attention with q/k norms in the rest."""
    cfg = hf.Lfm2Config(**_DECODER, conv_L_cache=3, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention"])
    return _tokens(_seeded(lambda: hf.Lfm2ForCausalLM(cfg)), "lfm2")


def ernie4_5_moe() -> ModelSpec:
    """Ernie 4.5 MoE: a dense first layer, then 2 of 4 experts per token (a softmax router
    with a bias correction) plus a shared expert."""
    cfg = hf.Ernie4_5_MoeConfig(**_DECODER, moe_intermediate_size=16, moe_k=2, moe_num_experts=4,
                                moe_num_shared_experts=1, moe_layer_start_index=1,
                                router_aux_loss_coef=0.0, output_router_logits=False)
    return _tokens(_seeded(lambda: hf.Ernie4_5_MoeForCausalLM(cfg)), "ernie4.5-moe")


def smollm3() -> ModelSpec:
    """SmolLM3: a Llama whose every third layer drops RoPE (no position information but the
    causal mask)."""
    cfg = hf.SmolLM3Config(**{**_DECODER, "num_hidden_layers": 3}, no_rope_layers=[1, 1, 0],
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return _tokens(_seeded(lambda: hf.SmolLM3ForCausalLM(cfg)), "smollm3")


_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                max_position_embeddings=64)


def big_bird() -> ModelSpec:
    """BigBird masked LM: block-sparse attention (blocks of one token: the first and last
    global, a sliding band of three, one random block per query, drawn by numpy seeded with the layer index) in the
    torch path, which gathers the key blocks by index."""
    cfg = hf.BigBirdConfig(**_ENCODER, attention_type="block_sparse", block_size=1,
                           num_random_blocks=1, sep_token_id=3)
    return _tokens(_seeded(lambda: hf.BigBirdForMaskedLM(cfg)), "big-bird", shift=False)


def esm() -> ModelSpec:
    """ESM-2 masked LM (protein): rotary attention, pre-norm layers, token dropout (the
    embeddings rescaled by the share of mask tokens in each sequence)."""
    cfg = hf.EsmConfig(**_ENCODER, position_embedding_type="rotary", token_dropout=True,
                       mask_token_id=2, pad_token_id=1, emb_layer_norm_before=False)
    return _tokens(_seeded(lambda: hf.EsmForMaskedLM(cfg)), "esm", shift=False)


def fnet() -> ModelSpec:
    """FNet masked LM: token mixing by a 2-d FFT (the real part of fftn over sequence and
    hidden), no attention."""
    cfg = hf.FNetConfig(**{k: v for k, v in _ENCODER.items()
                           if k not in ("num_attention_heads", "attention_probs_dropout_prob")},
                        use_tpu_fourier_optimizations=False)
    return _tokens(_seeded(lambda: hf.FNetForMaskedLM(cfg)), "fnet", shift=False)


def convbert() -> ModelSpec:
    """ConvBERT masked LM: mixed attention, half the heads span-based dynamic convolution
    (kernels predicted per token, applied through ``unfold``), a smaller embedding."""
    cfg = hf.ConvBertConfig(**_ENCODER, embedding_size=16, head_ratio=2, conv_kernel_size=3,
                            num_groups=1)
    return _tokens(_seeded(lambda: hf.ConvBertForMaskedLM(cfg)), "convbert", shift=False)


def mpnet() -> ModelSpec:
    """MPNet masked LM: a T5-style bucketed relative position bias shared by the layers (32
    buckets: ``compute_position_bias`` ignores the config's count and indexes 32)."""
    cfg = hf.MPNetConfig(**_ENCODER)
    return _tokens(_seeded(lambda: hf.MPNetForMaskedLM(cfg)), "mpnet", shift=False)


def canine() -> ModelSpec:
    """CANINE-S token classification over characters: hashed character embeddings (8 hash
    functions into 16 buckets), a local transformer, a strided conv downsampling to molecules,
    a deep transformer over those, and a conv upsampling back to characters."""
    cfg = hf.CanineConfig(**{k: v for k, v in _ENCODER.items() if k != "vocab_size"},
                          downsampling_rate=4, upsampling_kernel_size=3, num_hash_functions=4,
                          num_hash_buckets=16, local_transformer_stride=4, num_labels=VOCAB)
    return _tokens(_seeded(lambda: hf.CanineForTokenClassification(cfg)), "canine", shift=False)

# --- sweep 2026-12-02 (d): architectures new to the zoo ----------------------------------------

def levit() -> ModelSpec:
    """LeViT: a conv stem (4 strided 3x3 convs with batch norm), attention with a learned bias
    per head indexed by each pair's offset (cached in evaluation mode only), shrinking
    attention between stages, batch norm after every linear, a distillation classifier pair."""
    # the config subsamples after stages 0 and 1 whatever the depths: 3 stages are needed
    cfg = hf.LevitConfig(image_size=128, patch_size=16, hidden_sizes=[16, 24, 32],
                         num_attention_heads=[2, 2, 2], depths=[1, 1, 1], key_dim=[8, 8, 8],
                         mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2], drop_path_rate=0,
                         num_labels=5)
    return _classes(_seeded(lambda: hf.LevitForImageClassification(cfg)), "levit", (3, 128, 128), 5)


def cvt() -> ModelSpec:
    """CvT: overlapping conv token embeddings per stage, queries, keys and values from
    depthwise convs with batch norm (keys and values strided), a CLS token in the last stage.
    Stage i's drop-path rate is read at index i of a list as long as its depth, hence 1, 2."""
    cfg = hf.CvtConfig(num_channels=3, patch_sizes=[3, 3], patch_stride=[2, 2], patch_padding=[1, 1],
                       embed_dim=[8, 16], num_heads=[1, 2], depth=[1, 2], mlp_ratio=[2.0, 2.0],
                       attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0], drop_path_rate=[0.0, 0.0],
                       qkv_bias=[True, True], cls_token=[False, True],
                       qkv_projection_method=["dw_bn", "dw_bn"], kernel_qkv=[3, 3],
                       padding_kv=[1, 1], stride_kv=[2, 2], padding_q=[1, 1], stride_q=[1, 1],
                       num_labels=5)
    return _classes(_seeded(lambda: hf.CvtForImageClassification(cfg)), "cvt", (3, 16, 16), 5)


def videomae() -> ModelSpec:
    """VideoMAE: a 3-d conv patch embedding over tubelets of 2 frames, fixed sinusoidal
    positions, q and v biases (k's zero, concatenated), mean pooling into a classifier."""
    cfg = hf.VideoMAEConfig(image_size=16, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2,
                            hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, use_mean_pooling=True, num_labels=5)
    return _classes(_seeded(lambda: hf.VideoMAEForVideoClassification(cfg)), "videomae",
                    (4, 3, 16, 16), 5)


def data2vec_vision() -> ModelSpec:
    """Data2Vec vision: BEiT's encoder with a relative position bias shared by every layer
    and absolute positions off, layer scale, mean pooling."""
    cfg = hf.Data2VecVisionConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  drop_path_rate=0.0, use_shared_relative_position_bias=True,
                                  use_mean_pooling=True, num_labels=5)
    return _classes(_seeded(lambda: hf.Data2VecVisionForImageClassification(cfg)),
                    "data2vec-vision", (3, 16, 16), 5)


class _Depth(nn.Module):
    """A depth estimator taking pixel values and returning the predicted depth map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(pixel_values=pixel_values).predicted_depth
        return out


def dpt() -> ModelSpec:
    """DPT: a ViT whose hidden states of 4 layers are reassembled into a feature pyramid
    (readout projection of the CLS token, transposed and strided convs), fused coarse to fine
    by residual conv units with bilinear upsampling, a conv head regressing depth (MSE)."""
    cfg = hf.DPTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                       num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                       backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                       fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1,
                       use_auxiliary_head=False)
    model = _seeded(lambda: _Depth(hf.DPTForDepthEstimation(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        depth = pixels.mean(1).abs()  # a depth the model can learn from the pixels
        return (pixels,), depth

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_depth_mse, batch=batch,
                     name="dpt")


def _depth_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, F.interpolate(target[:, None], size=output.shape[-2:])[:, 0])


def _sigmoid_pairs(output: Any, target: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss: every image-text pair of the micro-batch a binary label (its own: 1)."""
    logits = output["logits_per_image"]
    labels = 2 * (target[:, None] == target[None, :]).float() - 1
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def siglip() -> ModelSpec:
    """SigLIP: CLIP's two towers (vision pooled by a multi-head attention probe, text by its
    last token), image-text similarities with a learned scale and bias, a sigmoid loss over
    every pair."""
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = hf.SiglipConfig(text_config=dict(tower, vocab_size=VOCAB, max_position_embeddings=SEQ),
                          vision_config=dict(tower, image_size=16, patch_size=4))
    return _text_image_pairs(_seeded(lambda: hf.SiglipModel(cfg)), "siglip", _sigmoid_pairs)


def wav2vec2_conformer() -> ModelSpec:
    """Wav2Vec2-Conformer: Wav2Vec2's conv feature extractor, then conformer blocks (two
    half-step feed-forwards around relative-position self-attention with learned biases
    u and v over a sinusoidal table, and a depthwise conv module with batch norm)."""
    cfg = hf.Wav2Vec2ConformerConfig(**_AUDIO, position_embeddings_type="relative",
                                     max_source_positions=64, conv_depthwise_kernel_size=7,
                                     conformer_conv_dropout=0.0, final_dropout=0.0)
    return _classes(_seeded(lambda: hf.Wav2Vec2ConformerForSequenceClassification(cfg)),
                    "wav2vec2-conformer", (400,), 5)


def unispeech() -> ModelSpec:
    """UniSpeech: Wav2Vec2's encoder (group-norm feature extractor, post-norm layers) as an
    utterance classifier (the quantizer trains only in pre-training)."""
    cfg = hf.UniSpeechConfig(**_AUDIO, final_dropout=0.0, feat_quantizer_dropout=0.0,
                             do_stable_layer_norm=False, feat_extract_norm="group")
    return _classes(_seeded(lambda: hf.UniSpeechForSequenceClassification(cfg)), "unispeech",
                    (400,), 5)


class _Codec(nn.Module):
    """An audio codec taking (batch, 1, samples) and returning its reconstruction, and for
    DAC also its quantizer's commitment and codebook losses."""

    def __init__(self, model: nn.Module, with_loss: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_loss = with_loss

    def forward(self, audio: torch.Tensor) -> Any:
        out = self.model(audio)
        if self.with_loss:
            return out.audio_values, out.loss
        return out.audio_values


def _reconstruction(output: Any, target: torch.Tensor) -> torch.Tensor:
    if isinstance(output, tuple):
        audio, vq = output
        return F.mse_loss(audio.reshape(target.shape), target) + vq.mean()
    return F.mse_loss(output.reshape(target.shape), target)


def _audio_codec(model: nn.Module, name: str) -> ModelSpec:
    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        t = torch.arange(400) / 400
        freq = torch.rand(n * BATCH, 1, 1, generator=g) * 20 + 5
        audio = torch.sin(2 * torch.pi * freq * t) + 0.1 * torch.randn(n * BATCH, 1, 400, generator=g)
        return (audio,), audio

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_reconstruction, batch=batch,
                     name=name)


def dac() -> ModelSpec:
    """DAC: a conv encoder with snake activations, a residual vector quantizer whose codes
    pass gradients straight through (``z + (z_q - z).detach()``) with factorised, normalised
    code lookup, the conv decoder; MSE reconstruction plus the commitment and codebook losses."""
    cfg = hf.DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 2], decoder_hidden_size=16,
                       n_codebooks=2, codebook_size=16, codebook_dim=4, quantizer_dropout=0.0,
                       sampling_rate=400)
    return _audio_codec(_seeded(lambda: _Codec(hf.DacModel(cfg), with_loss=True)), "dac")


# --- time series, probabilistic --------------------------------------------------------------

class _Forecaster(nn.Module):
    """A probabilistic forecaster (Informer, Time Series Transformer) taking past values,
    time features and the future values, returning the normal distribution it predicts for
    each future step (mean, standard deviation): the likelihood is taken outside the graph,
    as torch.distributions validates its arguments by branching on their values."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, past: torch.Tensor, past_time: torch.Tensor, future: torch.Tensor,
                future_time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.model(past_values=past, past_time_features=past_time,
                               past_observed_mask=torch.ones_like(past), future_values=future,
                               future_time_features=future_time)
        mean, std = self.model.output_params(out.last_hidden_state)  # Normal's domain map
        return out.loc + out.scale * mean, out.scale * std  # the model's AffineTransformed


def _nll(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    mean, std = output
    return -torch.distributions.Normal(mean, std).log_prob(target).mean()


_FORECAST = dict(prediction_length=4, context_length=8, lags_sequence=[1, 2], num_time_features=1,
                 distribution_output="normal", d_model=16, encoder_layers=2, decoder_layers=1,
                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                 decoder_ffn_dim=32, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                 encoder_layerdrop=0.0, decoder_layerdrop=0.0, use_cache=False)


def _forecast(model: nn.Module, name: str) -> ModelSpec:
    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        g = generator(n, step, 0)
        series = torch.randn(n * BATCH, 14, generator=g).cumsum(1) + 10
        time = (torch.arange(14, dtype=torch.float) / 14).expand(n * BATCH, 14)[..., None]
        return (series[:, :10], time[:, :10], series[:, 10:], time[:, 10:]), series[:, 10:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_nll, batch=batch, name=name)


def informer() -> ModelSpec:
    """Informer: ProbSparse self-attention (each query's sparsity measured on randomly
    sampled keys, only the top queries attend, the rest take the mean value), distilling
    conv layers halving the sequence between encoder layers, a normal-distribution head."""
    cfg = hf.InformerConfig(**_FORECAST, attention_type="prob", sampling_factor=2, distil=False)
    return _forecast(_seeded(lambda: _Forecaster(hf.InformerForPrediction(cfg))), "informer")


def time_series_transformer() -> ModelSpec:
    """Time Series Transformer: lagged values and time features embedded, mean scaling, a
    vanilla encoder-decoder, a normal-distribution head trained on the future's likelihood."""
    cfg = hf.TimeSeriesTransformerConfig(**_FORECAST)
    return _forecast(_seeded(lambda: _Forecaster(hf.TimeSeriesTransformerForPrediction(cfg))),
                     "time-series-transformer")


class _Mask2Former(nn.Module):
    """Mask2Former's model (its universal-segmentation head builds a Hungarian-matching loss
    that needs scipy) taking pixel values and returning the last decoder layer's mask logits
    per query, (batch, queries, height / 4, width / 4)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(pixel_values=pixel_values).masks_queries_logits[-1]
        return out


def _query_segments(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each pixel labelled with one query: cross-entropy over the queries' mask logits."""
    return F.cross_entropy(output, target)


def mask2former() -> ModelSpec:
    """Mask2Former: a Swin backbone, a pixel decoder of multi-scale deformable attention
    (``grid_sample`` at learned offsets over 3 feature levels), and a transformer decoder
    whose queries attend only inside their previous layer's predicted masks (masked attention,
    levels in turn); per-query mask logits at 1/4 resolution."""
    backbone = hf.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                             num_heads=[1, 1, 1, 1], window_size=2, drop_path_rate=0.0,
                             out_features=["stage1", "stage2", "stage3", "stage4"])
    # the pixel decoder's group norms have 32 groups: widths of 32. 32x32 images: the last
    # feature map is 1x1, which torch takes for channels-last, and torch 2.13's CPU group norm
    # backward crashes on it when asked for the weight's gradient alone, as zero-bubble's
    # weight pass does ([Note: group norm in a weight pass] in autopipe/runtime/norms.py)
    cfg = hf.Mask2FormerConfig(backbone_config=backbone, use_pretrained_backbone=False,
                               feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, dim_feedforward=32, num_queries=4,
                               num_labels=3, use_auxiliary_loss=False, common_stride=4)
    model = _seeded(lambda: _Mask2Former(hf.Mask2FormerModel(cfg)))
    # as DETR's: in training mode each pixel-decoder encoder layer clamps its output if any
    # of it is not finite, a branch on the data; with no dropout, evaluation mode is the same
    for m in model.modules():
        if type(m).__name__ == "Mask2FormerPixelDecoderEncoderLayer":
            m.eval()

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        pixels = torch.randn(n * BATCH, 3, 32, 32, generator=g)
        return (pixels,), torch.randint(0, 4, (n * BATCH, 8, 8), generator=g)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_query_segments,
                     batch=batch, name="mask2former")


# --- sweep of 2026-12-03: vision, audio, video and vision with language -------------------------

_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
_VISION = dict(_TOWER, image_size=16, patch_size=4)


def convnext_v2() -> ModelSpec:
    """ConvNeXt V2: ConvNeXt's blocks with global response normalisation."""
    cfg = hf.ConvNextV2Config(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2,
                              num_stages=2, drop_path_rate=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.ConvNextV2ForImageClassification(cfg)), "convnext-v2", (3, 16, 16), 5)


def hiera() -> ModelSpec:
    """Hiera: a hierarchical ViT whose first stage attends within masked units, with query
    pooling between stages (tokens unrolled and rerolled by reshapes)."""
    cfg = hf.HieraConfig(embed_dim=8, image_size=[32, 32], patch_size=[3, 3], patch_stride=[2, 2],
                         patch_padding=[1, 1], mlp_ratio=2.0, depths=[1, 1], num_heads=[1, 2],
                         num_query_pool=1, query_stride=[2, 2], masked_unit_size=[4, 4],
                         masked_unit_attention=[True, False], drop_path_rate=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.HieraForImageClassification(cfg)), "hiera", (3, 32, 32), 5)


def ast() -> ModelSpec:
    """Audio Spectrogram Transformer: a ViT over overlapping patches of a mel spectrogram."""
    cfg = hf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       patch_size=4, frequency_stride=4, time_stride=4, max_length=16, num_mel_bins=16,
                       num_labels=5)
    return _classes(_seeded(lambda: hf.ASTForAudioClassification(cfg)), "ast", (16, 16), 5)


def wavlm() -> ModelSpec:
    """WavLM: Wav2Vec2's encoder with gated relative position biases in its attention."""
    cfg = hf.WavLMConfig(**_AUDIO, num_buckets=16, max_bucket_distance=32, final_dropout=0.0,
                         do_stable_layer_norm=True, feat_extract_norm="layer")
    return _classes(_seeded(lambda: hf.WavLMForSequenceClassification(cfg)), "wavlm", (400,), 5)


def timesformer() -> ModelSpec:
    """TimeSformer: video frames' patches, attention divided into time then space."""
    cfg = hf.TimesformerConfig(image_size=16, patch_size=4, num_channels=3, num_frames=2, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                               drop_path_rate=0, attention_type="divided_space_time", num_labels=5)
    return _classes(_seeded(lambda: hf.TimesformerForVideoClassification(cfg)), "timesformer",
                    (2, 3, 16, 16), 5)


def clap() -> ModelSpec:
    """CLAP: a text tower and an audio Swin over a mel spectrogram whose bins are transposed
    onto channels for a batch norm and back (the layouts a cut changed: [Note: batch norm
    gradients laid out like its output] in autopipe/runtime/norms.py), trained contrastively."""
    text = dict(_TOWER, vocab_size=VOCAB, max_position_embeddings=SEQ + 2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, projection_dim=16)
    audio = dict(window_size=4, num_mel_bins=16, spec_size=32, patch_size=4, patch_stride=[4, 4],
                 hidden_size=16, patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[1, 2],
                 enable_fusion=False, projection_dim=16, hidden_dropout_prob=0.0, drop_path_rate=0.0)
    cfg = hf.ClapConfig(text_config=text, audio_config=audio, projection_dim=16)
    model = _seeded(lambda: hf.ClapModel(cfg))

    def loss(output: Any, target: torch.Tensor) -> torch.Tensor:
        logits = output["logits_per_audio"]
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        text = torch.randint(3, VOCAB, (n * BATCH, SEQ), generator=g)
        mels = torch.randn(n * BATCH, 1, 64, 16, generator=g)
        return (text, mels), torch.arange(BATCH).repeat(n)  # the i-th text goes with the i-th clip

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=loss, batch=batch, name="clap")


class _Captioner(nn.Module):
    """An image-conditioned text model called with (pixels, token ids) by position: its logits."""

    def __init__(self, model: nn.Module, pixels: str = "pixel_values", ids: str = "input_ids",
                 **fixed: Any) -> None:
        super().__init__()
        self.model, self.pixels, self.ids, self.fixed = model, pixels, ids, fixed

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.pixels: pixels, self.ids: ids}, **self.fixed).logits


class _Kosmos2(nn.Module):
    """Kosmos-2 with its first 4 tokens the image's: their embeddings are replaced by the
    image features (``x[mask] = features``, a boolean-mask write)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, :4] = True
        return self.model(pixel_values=pixels, input_ids=ids, image_embeds_position_mask=mask,
                          use_cache=False).logits


def _caption(model: nn.Module, name: str, pixels: Callable[[int, torch.Generator], torch.Tensor],
             prefix: int = 0) -> ModelSpec:
    """Next-token loss on text after ``prefix`` image tokens (no loss on those)."""

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        text = torch.randint(3, IMAGE_TOKEN, (n * BATCH, SEQ + 1), generator=g)
        images = pixels(n, g)
        if not prefix:
            return (images, text[:, :-1]), text[:, 1:]
        image = torch.full((n * BATCH, prefix), IMAGE_TOKEN)
        return ((images, torch.cat([image, text[:, :-1]], 1)),
                torch.cat([torch.full((n * BATCH, prefix), -100), text[:, 1:]], 1))

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch, name=name)


def _images(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n * BATCH, 3, 16, 16, generator=g)


def blip2() -> ModelSpec:
    """BLIP-2: a ViT, a Q-Former whose 4 learned queries cross-attend to the image, projected
    into an OPT decoder in place of 4 image tokens."""
    qformer = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                   encoder_hidden_size=32, vocab_size=VOCAB, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, max_position_embeddings=32)
    text = dict(model_type="opt", vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64, dropout=0.0,
                attention_dropout=0.0, use_cache=False, bos_token_id=1, pad_token_id=0, eos_token_id=2)
    cfg = hf.Blip2Config(vision_config=_VISION, qformer_config=qformer, text_config=text, num_query_tokens=4,
                         image_token_index=IMAGE_TOKEN)
    return _caption(_seeded(lambda: _Captioner(hf.Blip2ForConditionalGeneration(cfg))), "blip2", _images,
                    prefix=4)


def kosmos2() -> ModelSpec:
    """Kosmos-2: a CLIP-style vision tower resampled to 4 latent queries, written into the
    text embeddings at the image tokens (``x[mask] = features``, priced on meta tensors as
    a masked scatter: [Note: masked writes on meta tensors] in autopipe/profile/_masked.py)."""
    text = dict(vocab_size=VOCAB, max_position_embeddings=64, embed_dim=32, layers=2, ffn_dim=64,
                attention_heads=4, dropout=0.0, attention_dropout=0.0, use_cache=False)
    cfg = hf.Kosmos2Config(text_config=text, vision_config=dict(_VISION), latent_query_num=4)
    return _caption(_seeded(lambda: _Kosmos2(hf.Kosmos2ForConditionalGeneration(cfg))), "kosmos2", _images,
                    prefix=4)


def _patches(n: int, g: torch.Generator) -> torch.Tensor:
    """Pix2Struct's input: 16 patches of 2x2x3 values after their row and column (1-based)."""
    rows = torch.arange(1, 5).repeat_interleave(4).float()
    cols = torch.arange(1, 5).repeat(4).float()
    pos = torch.stack([rows, cols], -1).expand(n * BATCH, 16, 2)
    return torch.cat([pos, torch.randn(n * BATCH, 16, 12, generator=g)], -1)


def pix2struct() -> ModelSpec:
    """Pix2Struct: a T5-style encoder over flattened variable-resolution patches with their
    row and column embedded, and a T5-style decoder."""
    vision = dict(hidden_size=32, patch_embed_hidden_size=12, d_ff=64, d_kv=8, num_hidden_layers=1,
                  num_attention_heads=4, dropout_rate=0.0, attention_dropout=0.0, seq_len=16,
                  initializer_range=0.02)
    text = dict(vocab_size=VOCAB, hidden_size=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4,
                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, use_cache=False,
                initializer_range=0.02)
    cfg = hf.Pix2StructConfig(vision_config=vision, text_config=text, initializer_range=0.02)
    model = _seeded(lambda: _Captioner(hf.Pix2StructForConditionalGeneration(cfg), "flattened_patches",
                                       "decoder_input_ids"))
    return _caption(model, "pix2struct", _patches)


class _LayoutLM(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, bbox: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, bbox=bbox, pixel_values=pixels).logits


def layoutlmv3() -> ModelSpec:
    """LayoutLMv3: text tokens with 2-D box position embeddings and image patches in one
    encoder, with spatial attention biases; a document classifier."""
    cfg = hf.LayoutLMv3Config(vocab_size=VOCAB, **_TOWER, max_position_embeddings=SEQ + 4,
                              coordinate_size=6, shape_size=4, input_size=16, patch_size=4,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              max_2d_position_embeddings=128, num_labels=5, pad_token_id=1)
    model = _seeded(lambda: _LayoutLM(hf.LayoutLMv3ForSequenceClassification(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        ids = torch.randint(3, VOCAB, (n * BATCH, SEQ), generator=g)
        xy = torch.randint(0, 64, (n * BATCH, SEQ, 2), generator=g)
        wh = torch.randint(1, 60, (n * BATCH, SEQ, 2), generator=g)
        return ((ids, torch.cat([xy, xy + wh], -1), torch.randn(n * BATCH, 3, 16, 16, generator=g)),
                torch.randint(0, 5, (n * BATCH,), generator=g))

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name="layoutlmv3")


# --- sweep of 2026-12-03: text models -----------------------------------------------------------


def albert() -> ModelSpec:
    """ALBERT: one layer's weights shared by every layer (tied parameters across stages
    wherever a cut falls), a factorised embedding."""
    cfg = hf.AlbertConfig(**_ENCODER, embedding_size=16, num_hidden_groups=1, inner_group_num=1,
                          classifier_dropout_prob=0.0)
    return _tokens(_seeded(lambda: hf.AlbertForMaskedLM(cfg)), "albert", shift=False)


def prophetnet() -> ModelSpec:
    """ProphetNet: an encoder-decoder whose decoder predicts 2 future tokens in n-gram
    streams, with bucketed relative positions."""
    cfg = hf.ProphetNetConfig(vocab_size=VOCAB, hidden_size=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
                              num_encoder_layers=1, num_decoder_layers=1, num_encoder_attention_heads=4,
                              num_decoder_attention_heads=4, max_position_embeddings=64, ngram=2,
                              num_buckets=8, relative_max_distance=16, dropout=0.0,
                              attention_dropout=0.0, activation_dropout=0.0, use_cache=False,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=0)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.ProphetNetForConditionalGeneration(cfg))), "prophetnet")


def t5gemma() -> ModelSpec:
    """T5Gemma: Gemma 2 layers (sliding and full attention) as an encoder and a decoder."""
    dec = dict(_DECODER, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
               dropout_rate=0.0, attention_dropout=0.0)
    cfg = hf.T5GemmaConfig(encoder=dict(dec), decoder=dict(dec), vocab_size=VOCAB, dropout_rate=0.0,
                           attention_dropout=0.0, classifier_dropout_rate=0.0, use_cache=False,
                           tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=0)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.T5GemmaForConditionalGeneration(cfg))), "t5gemma")


def deepseek_v2() -> ModelSpec:
    """DeepSeek-V2: latent attention and group-limited routing over shared and routed experts."""
    cfg = hf.DeepseekV2Config(**{**_DECODER, "num_hidden_layers": 2, "num_key_value_heads": 4},
                              moe_intermediate_size=16, n_shared_experts=1, n_routed_experts=4,
                              num_experts_per_tok=2, first_k_dense_replace=1, n_group=2,
                              topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                              qk_nope_head_dim=8, v_head_dim=8, topk_method="group_limited_greedy")
    return _tokens(_seeded(lambda: hf.DeepseekV2ForCausalLM(cfg)), "deepseek-v2")


def minimax() -> ModelSpec:
    """MiniMax: lightning (block linear) attention layers and full attention layers, experts."""
    cfg = hf.MiniMaxConfig(**_DECODER, **_MOE, head_dim=8, block_size=4,
                           layer_types=["linear_attention", "full_attention"])
    return _tokens(_seeded(lambda: hf.MiniMaxForCausalLM(cfg)), "minimax")


def falcon_h1() -> ModelSpec:
    """Falcon-H1: attention and a Mamba-2 mixer side by side in every layer."""
    cfg = hf.FalconH1Config(**_DECODER, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                            mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
                            mamba_chunk_size=4, projectors_bias=False, mamba_rms_norm=True)
    return _tokens(_seeded(lambda: hf.FalconH1ForCausalLM(cfg)), "falcon-h1")



# --- the sweep of 2026-12-05 ------------------------------------------------------------------

def gpt_bigcode() -> ModelSpec:
    """GPTBigCode (StarCoder): multi-query attention, one key and value head fused into the
    query projection's output and split off it, learned positions."""
    cfg = hf.GPTBigCodeConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                              multi_query=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                              use_cache=False)
    return _tokens(_seeded(lambda: hf.GPTBigCodeForCausalLM(cfg)), "gpt-bigcode")


def mpt() -> ModelSpec:
    """MPT: ALiBi (a per-head linear bias on key distance, a buffer made from the slopes) in
    place of position embeddings, no biases, the output projection tied to the embedding."""
    cfg = hf.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, expansion_ratio=2,
                       max_seq_len=64, use_cache=False, attn_config={"alibi": True})
    return _tokens(_seeded(lambda: hf.MptForCausalLM(cfg)), "mpt")


def glm4_moe() -> ModelSpec:
    """GLM-4 MoE: rotary on half of each head, a dense first layer, then sigmoid-scored experts
    with a correction bias and a shared expert."""
    cfg = hf.Glm4MoeConfig(**_DECODER, head_dim=8, moe_intermediate_size=16, n_routed_experts=4,
                           num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                           n_group=1, topk_group=1, partial_rotary_factor=0.5)
    return _tokens(_seeded(lambda: hf.Glm4MoeForCausalLM(cfg)), "glm4-moe")


def longcat_flash() -> ModelSpec:
    """LongCat-Flash: two latent attentions and two MLPs per layer around a shortcut MoE whose
    router may pick "zero experts" (a token passed through unchanged)."""
    cfg = hf.LongcatFlashConfig(vocab_size=VOCAB, hidden_size=32, ffn_hidden_size=64,
                                expert_ffn_hidden_size=16, num_layers=2, num_attention_heads=4,
                                kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                v_head_dim=8, head_dim=8, n_routed_experts=4, zero_expert_num=2,
                                moe_topk=2, max_position_embeddings=64, use_cache=False)
    return _tokens(_seeded(lambda: hf.LongcatFlashForCausalLM(cfg)), "longcat-flash")


def squeezebert() -> ModelSpec:
    """SqueezeBERT: attention and feed-forward as grouped 1x1 convolutions over channels-first
    activations (permuted in and out of each layer), masked LM."""
    cfg = hf.SqueezeBertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, embedding_size=32,
                               max_position_embeddings=64, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    return _tokens(_seeded(lambda: hf.SqueezeBertForMaskedLM(cfg)), "squeezebert", shift=False)


def pvt_v2() -> ModelSpec:
    """PVTv2: overlapping patch embeddings, attention whose keys and values come from a
    spatially reduced (strided conv) map, depthwise convs inside the MLPs."""
    cfg = hf.PvtV2Config(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                         hidden_sizes=[8, 16], patch_sizes=[3, 3], strides=[2, 2],
                         num_attention_heads=[1, 2], mlp_ratios=[2, 2], drop_path_rate=0.0,
                         num_labels=5)
    return _classes(_seeded(lambda: hf.PvtV2ForImageClassification(cfg)), "pvt-v2", (3, 16, 16), 5)


def focalnet() -> ModelSpec:
    """FocalNet: focal modulation (hierarchical depthwise-conv contexts gated and summed, then
    a pointwise modulator) in place of attention."""
    cfg = hf.FocalNetConfig(image_size=16, patch_size=2, num_channels=3, embed_dim=8, depths=[1, 1],
                            focal_levels=[2, 2], focal_windows=[3, 3], drop_path_rate=0.0,
                            num_labels=5)
    return _classes(_seeded(lambda: hf.FocalNetForImageClassification(cfg)), "focalnet",
                    (3, 16, 16), 5)


class _Codes(nn.Module):
    """MusicGen's decoder over (batch × codebooks, seq) audio codes: logits (batch, codebooks, seq, vocab)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(input_ids=codes).logits
        return out


def _codes_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def musicgen() -> ModelSpec:
    """MusicGen's decoder: 2 parallel codebooks of audio tokens, their embeddings summed into
    one sequence, sinusoidal positions, one LM head per codebook (stacked)."""
    cfg = hf.MusicgenDecoderConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, ffn_dim=64, max_position_embeddings=64,
                                   num_codebooks=2, dropout=0.0, attention_dropout=0.0,
                                   activation_dropout=0.0, use_cache=False, pad_token_id=0,
                                   bos_token_id=1)
    model = _seeded(lambda: _Codes(hf.MusicgenForCausalLM(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)  # each sample's codebooks are consecutive rows
        codes = torch.randint(2, VOCAB, (n * BATCH * 2, SEQ + 1), generator=g)
        return (codes[:, :-1],), codes[:, 1:].reshape(n * BATCH, 2, SEQ)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_codes_loss, batch=batch,
                     name="musicgen")


# --- the sweep of 2026-12-05, later ---------------------------------------------------------------

def xlstm() -> ModelSpec:
    """xLSTM: mLSTM blocks (matrix memories with exponential gates, computed chunkwise in
    parallel over the sequence) in place of attention."""
    cfg = hf.xLSTMConfig(vocab_size=VOCAB, hidden_size=32, embedding_dim=32, num_hidden_layers=2, num_heads=2,
                         num_blocks=2, use_cache=False, mode="train", chunk_size=4, qk_dim_factor=0.5,
                         v_dim_factor=1.0, tie_word_embeddings=False)
    return _tokens(_seeded(lambda: hf.xLSTMForCausalLM(cfg)), "xlstm")


def zamba() -> ModelSpec:
    """Zamba: Mamba layers with one shared attention block called again every other layer
    (its weights read at several depths, which no cut can give each stage alone)."""
    cfg = hf.ZambaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, attn_layer_period=2, attn_layer_offset=1,
                         mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4, n_mamba_heads=2,
                         max_position_embeddings=64, use_cache=False, use_mamba_kernels=False,
                         tie_word_embeddings=False)
    return _tokens(_seeded(lambda: hf.ZambaForCausalLM(cfg)), "zamba")


def timesfm() -> ModelSpec:
    """TimesFM: a decoder over patches of the series, residual-block patch embeddings, the
    frequency class embedded from int32 indices (an embedding read by int32 rows), a mean
    forecast trained with MSE."""
    cfg = hf.TimesFmConfig(patch_length=4, context_length=16, horizon_length=4, hidden_size=16,
                           intermediate_size=32, head_dim=8, num_attention_heads=2, num_hidden_layers=2,
                           quantiles=[0.1, 0.5, 0.9], min_timescale=1, max_timescale=100, attention_dropout=0.0)
    model = _seeded(lambda: _TimesFm(hf.TimesFmModelForPrediction(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        series = torch.randn(n * BATCH, 20, generator=g).cumsum(1)
        return (series[:, :16],), series[:, 16:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_mse, batch=batch, name="timesfm")


class _TimesFm(nn.Module):
    """TimesFM taking the past values (frequency class 0) and returning the mean forecast."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, past: torch.Tensor) -> torch.Tensor:
        freq = torch.zeros(past.shape[0], dtype=torch.long)
        out: torch.Tensor = self.model(past_values=past, freq=freq).mean_predictions
        return out


def groupvit() -> ModelSpec:
    """GroupViT: image tokens grouped into learned group tokens by a hard Gumbel-softmax
    assignment (straight-through; the noise drawn through ``torch.distributions.Gumbel`` in
    every forward: [Note: distributions built inside forward]), trained contrastively with
    a text transformer, as CLIP."""
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=SEQ)
    vision = dict(hidden_size=32, intermediate_size=64, depths=[1, 1], num_group_tokens=[4, 0],
                  num_output_groups=[4, 4], num_attention_heads=4, image_size=16, patch_size=4, dropout=0.0,
                  attention_dropout=0.0)
    cfg = hf.GroupViTConfig(text_config=text, vision_config=vision, projection_dim=16,
                            projection_intermediate_dim=32)
    return _text_image_pairs(_seeded(lambda: hf.GroupViTModel(cfg)), "groupvit", _contrastive)


def paligemma() -> ModelSpec:
    """PaliGemma: a SigLIP tower's patches written over the image tokens of a Gemma decoder
    (a masked scatter), which attends to the image and the prompt bidirectionally."""
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, head_dim=8, max_position_embeddings=64, use_cache=False)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                  patch_size=8, projection_dim=32)
    cfg = hf.PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE_TOKEN,
                             projection_dim=32, hidden_size=32, vocab_size=VOCAB)
    return _caption(_seeded(lambda: _Captioner(hf.PaliGemmaForConditionalGeneration(cfg), use_cache=False)),
                    "paligemma", _images, prefix=4)


def trocr() -> ModelSpec:
    """TrOCR: a ViT encoder and a TrOCR decoder put together by ``VisionEncoderDecoderModel``
    (the decoder cross-attends to the image's patches), trained on the next token."""
    enc = hf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    dec = hf.TrOCRConfig(vocab_size=VOCAB, d_model=32, decoder_layers=1, decoder_attention_heads=4,
                         decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, use_cache=False, decoder_start_token_id=0, pad_token_id=1)
    cfg = hf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id = 0, 1
    return _caption(_seeded(lambda: _Seq2Seq(hf.VisionEncoderDecoderModel(cfg), "pixel_values")), "trocr",
                    _images)


class _Frames(nn.Module):
    """A speech model taking one input by position and returning its logits per frame."""

    def __init__(self, model: nn.Module, source: str) -> None:
        super().__init__()
        self.model, self.source = model, source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(**{self.source: x}).logits
        return out


def parakeet() -> ModelSpec:
    """Parakeet (FastConformer) for CTC: a strided conv subsampling of log-mel frames,
    conformer blocks (relative positional attention, a depthwise conv module, two half-step
    feed-forwards), logits per frame; trained on a label per frame."""
    enc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               num_mel_bins=16, subsampling_conv_channels=8, subsampling_factor=4, conv_kernel_size=3,
               dropout=0.0, dropout_positions=0.0, layerdrop=0.0, activation_dropout=0.0, attention_dropout=0.0)
    model = _seeded(lambda: _Frames(hf.ParakeetForCTC(hf.ParakeetCTCConfig(vocab_size=12, encoder_config=enc)),
                                    "input_features"))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        mels = torch.randn(n * BATCH, 32, 16, generator=g)  # 32 frames, subsampled to 8
        return (mels,), torch.randint(0, 12, (n * BATCH, 8), generator=g)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name="parakeet")


def moonshine() -> ModelSpec:
    """Moonshine: a conv front end on raw audio (no mel features), a rotary encoder, and a
    decoder cross-attending to it (encoder-decoder speech recognition)."""
    cfg = hf.MoonshineConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, encoder_num_hidden_layers=1,
                             decoder_num_hidden_layers=1, encoder_num_attention_heads=4,
                             decoder_num_attention_heads=4, max_position_embeddings=64, use_cache=False,
                             pad_token_id=0, bos_token_id=1, decoder_start_token_id=1)
    return _transcribe(_seeded(lambda: _Seq2Seq(hf.MoonshineForConditionalGeneration(cfg), "input_values")),
                       "moonshine", samples=1600, first_token=2)


class _UnivNet(nn.Module):
    """UnivNet taking (log-mel frames, noise) by position and returning the waveform."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, mels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(input_features=mels, noise_sequence=noise).waveforms
        return out


def univnet() -> ModelSpec:
    """UnivNet: a vocoder whose convolutions take their kernels from a kernel predictor run
    on the mel frames (location-variable convolutions: weights made by the network per
    position), upsampling noise to a waveform; trained by MSE against a waveform."""
    cfg = hf.UnivNetConfig(model_in_channels=8, model_hidden_channels=8, num_mel_bins=16, resblock_kernel_sizes=[3],
                           resblock_stride_sizes=[4], resblock_dilation_sizes=[[1, 3]], kernel_predictor_num_blocks=1,
                           kernel_predictor_hidden_channels=8, kernel_predictor_conv_size=3,
                           kernel_predictor_dropout=0.0)
    model = _seeded(lambda: _UnivNet(hf.UnivNetModel(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        mels = torch.randn(n * BATCH, 6, 16, generator=g)
        noise = torch.randn(n * BATCH, 6, 8, generator=g)
        return (mels, noise), torch.randn(n * BATCH, 24, generator=g).tanh()  # 6 frames x hop 4

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_mse, batch=batch, name="univnet")


class _Decision(nn.Module):
    """The Decision Transformer taking (states, actions, returns to go, timesteps) by position
    and returning its predicted actions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(states=states, actions=actions, returns_to_go=returns,
                                       timesteps=timesteps).action_preds
        return out


def decision_transformer() -> ModelSpec:
    """Decision Transformer: returns, states and actions embedded and interleaved into one
    sequence three times as long, a GPT-2 over it, actions read from the states' positions;
    trained by MSE to predict each step's action."""
    cfg = hf.DecisionTransformerConfig(state_dim=6, act_dim=3, hidden_size=32, max_ep_len=64, n_layer=2, n_head=4,
                                       n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = _seeded(lambda: _Decision(hf.DecisionTransformerModel(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        g = generator(n, step, 0)
        b = n * BATCH
        states = torch.randn(b, SEQ, 6, generator=g)
        actions = torch.randn(b, SEQ, 3, generator=g).tanh()
        returns = torch.randn(b, SEQ, 1, generator=g)
        timesteps = torch.arange(SEQ).expand(b, SEQ).contiguous()
        return (states, actions, returns, timesteps), actions

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_mse, batch=batch,
                     name="decision-transformer")



# --- the sweep of 2026-12-05, third ------------------------------------------------------------

def diffllama() -> ModelSpec:
    """DiffLlama: differential attention (two softmax maps over halves of each head, the second
    subtracted with a weight made from four learned vectors, then a norm per head)."""
    cfg = hf.DiffLlamaConfig(**_DECODER, head_dim=8)
    return _tokens(_seeded(lambda: hf.DiffLlamaForCausalLM(cfg)), "diffllama")


def doge() -> ModelSpec:
    """Doge: dynamic mask attention (a mask made from the values, keeping each query's top 4
    keys of 8) and a cross-domain mixture of 16 tiny experts held as embeddings, chosen by
    product keys (the top 4 of each half's scores, then the top 4 of their sums)."""
    cfg = hf.DogeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, keep_window_size=4, is_moe=True,
                        num_experts=16, num_experts_per_tok=4, max_position_embeddings=64, use_cache=False,
                        router_aux_loss_coef=0.0)
    return _tokens(_seeded(lambda: hf.DogeForCausalLM(cfg)), "doge")


def deepseek_v32() -> ModelSpec:
    """DeepSeek-V3.2: V3's latent attention and grouped experts, with a lightning indexer that
    scores every key for every query and keeps the top 4 (a mask scattered from their
    indices)."""
    cfg = hf.DeepseekV32Config(**{**_DECODER, "num_key_value_heads": 4}, moe_intermediate_size=16,
                               n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
                               first_k_dense_replace=1, n_group=2, topk_group=1, kv_lora_rank=16,
                               q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
                               index_topk=4, index_head_dim=16, index_n_heads=2)
    return _tokens(_seeded(lambda: hf.DeepseekV32ForCausalLM(cfg)), "deepseek-v3.2")


def deepseek_v4() -> ModelSpec:
    """DeepSeek-V4: hyper-connections (2 residual streams mixed by Sinkhorn-normalised
    matrices), sliding, compressed-sparse (keys pooled 2 to 1, an indexer's top 2) and heavily
    compressed attention, grouped low-rank output projections, and a first layer whose
    experts are looked up from the token ids (hash routing)."""
    cfg = hf.DeepseekV4Config(vocab_size=VOCAB, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, q_lora_rank=16,
                              num_experts_per_tok=2, n_routed_experts=4, n_shared_experts=1,
                              max_position_embeddings=64,
                              layer_types=["sliding_attention", "compressed_sparse_attention",
                                           "heavily_compressed_attention"],
                              compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 4},
                              hc_mult=2, hc_sinkhorn_iters=3, mlp_layer_types=["hash_moe", "moe", "moe"],
                              sliding_window=4, o_groups=2, o_lora_rank=16, index_n_heads=2, index_head_dim=8,
                              index_topk=2, num_nextn_predict_layers=0, router_aux_loss_coef=0.0, use_cache=False,
                              partial_rotary_factor=0.5)
    return _tokens(_seeded(lambda: hf.DeepseekV4ForCausalLM(cfg)), "deepseek-v4")


def kimi_linear() -> ModelSpec:
    """Kimi Linear: Kimi delta attention (the delta rule with a forget gate per channel, its
    chunk's rows solved one by one in place) alternating with latent attention, and a
    routed mixture with a shared expert."""
    cfg = hf.KimiLinearConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                              n_shared_experts=1, num_local_experts=4, num_experts_per_tok=2, kv_lora_rank=16,
                              q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                              linear_head_dim=8, linear_num_heads=4, linear_conv_kernel_dim=4,
                              layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
                              max_position_embeddings=64, use_cache=False, pad_token_id=0, bos_token_id=1,
                              eos_token_id=2)
    return _tokens(_seeded(lambda: hf.KimiLinearForCausalLM(cfg)), "kimi-linear")


def nemotron_h() -> ModelSpec:
    """Nemotron-H: Mamba-2, attention and mixture-of-experts layers as separate blocks of one
    stack (one residual block per kind), squared-ReLU experts with a shared one."""
    cfg = hf.NemotronHConfig(vocab_size=VOCAB, hidden_size=32, layers_block_type=["mamba", "attention", "moe"],
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                             intermediate_size=64, use_mamba_kernels=False, ssm_state_size=8, mamba_num_heads=4,
                             mamba_head_dim=16, n_groups=2, chunk_size=4, n_routed_experts=4, n_shared_experts=1,
                             moe_intermediate_size=16, moe_shared_expert_intermediate_size=16,
                             num_experts_per_tok=2, use_cache=False, num_logits_to_keep=0)
    return _tokens(_seeded(lambda: hf.NemotronHForCausalLM(cfg)), "nemotron-h")


def hrm_text() -> ModelSpec:
    """HRM text: two stacks called again in nested cycles (the low-level stack twice per
    high-level step), the first of them under ``torch.no_grad`` (gradients only through the
    last cycles), a prefix-LM mask."""
    cfg = hf.HrmTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, head_dim=8, max_position_embeddings=64, use_cache=False,
                           H_cycles=2, L_cycles=2)
    return _tokens(_seeded(lambda: hf.HrmTextForCausalLM(cfg)), "hrm-text")


def gemma4() -> ModelSpec:
    """Gemma 4 text: a small embedding per layer looked up from the token ids and gated into
    each layer's output, keys reused as values, and a mixture-of-experts block beside each
    layer's MLP, on Gemma 3's sliding and global layers."""
    cfg = hf.Gemma4TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                              use_cache=False, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                              vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8,
                              enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16,
                              attention_k_eq_v=True)
    return _tokens(_seeded(lambda: hf.Gemma4ForCausalLM(cfg)), "gemma4")


def zaya() -> ModelSpec:
    """ZAYA: compressed convolutional attention (queries and keys mixed along the sequence by
    a causal conv, half of each value from the token before), and experts chosen by an MLP
    router whose state is carried from layer to layer, with an expert that does nothing."""
    cfg = hf.ZayaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, use_cache=False,
                        moe_intermediate_size=16, num_experts_per_tok=1, num_experts=4, router_hidden_size=16,
                        tie_word_embeddings=True)
    return _tokens(_seeded(lambda: hf.ZayaForCausalLM(cfg)), "zaya")


def yoso() -> ModelSpec:
    """YOSO masked LM: attention weights as the expected collision rate of random hyperplane
    hashes of unit queries and keys (a power of 1 - angle / pi, no softmax)."""
    cfg = hf.YosoConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        max_position_embeddings=64, use_fast_hash=False, hash_code_len=4, num_hash=8)
    return _tokens(_seeded(lambda: hf.YosoForMaskedLM(cfg)), "yoso", shift=False)


def pegasus_x() -> ModelSpec:
    """PEGASUS-X: an encoder of block-local attention (blocks of 4 tokens, staggered by half a
    block every other layer) with 2 global tokens every block attends to."""
    cfg = hf.PegasusXConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=1,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0, num_global_tokens=2,
                            block_size=4, stagger_local_blocks=True, use_cache=False)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.PegasusXForConditionalGeneration(cfg))), "pegasus-x")


def swiftformer() -> ModelSpec:
    """SwiftFormer: efficient additive attention (queries pooled by learned weights into one
    global query that scales the keys: no query-key product), conv encoders, batch norm."""
    cfg = hf.SwiftFormerConfig(image_size=16, num_channels=3, depths=[1, 1], embed_dims=[8, 16], mlp_ratio=2,
                               downsamples=[True, True], num_labels=5)
    return _classes(_seeded(lambda: hf.SwiftFormerForImageClassification(cfg)), "swiftformer", (3, 16, 16), 5)


def mobilevitv2() -> ModelSpec:
    """MobileViTV2: separable self-attention (a context vector from one score per patch, linear
    in the number of patches) over unfolded patches, inverted residuals with batch norm."""
    cfg = hf.MobileViTV2Config(image_size=64, patch_size=2, n_attn_blocks=[1, 1, 1], base_attn_unit_dims=[16, 16, 16],
                               width_multiplier=0.25, classifier_dropout_prob=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.MobileViTV2ForImageClassification(cfg)), "mobilevitv2", (3, 64, 64), 5)


def wav2vec2_bert() -> ModelSpec:
    """Wav2Vec2-BERT for CTC: conformer blocks over filterbank features (no conv feature
    extractor), attention with learned relative key positions clipped 8 left and 4 right."""
    cfg = hf.Wav2Vec2BertConfig(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, feature_projection_input_dim=16, layerdrop=0.0,
                                final_dropout=0.0, apply_spec_augment=False, conv_depthwise_kernel_size=3,
                                conformer_conv_dropout=0.0, left_max_position_embeddings=8,
                                right_max_position_embeddings=4)
    model = _seeded(lambda: _Frames(hf.Wav2Vec2BertForCTC(cfg), "input_features"))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        features = torch.randn(n * BATCH, SEQ, 16, generator=g)
        return (features,), torch.randint(0, 12, (n * BATCH, SEQ), generator=g)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name="wav2vec2-bert")


def t5gemma2() -> ModelSpec:
    """T5Gemma 2: a Gemma 3 encoder (bidirectional sliding-window attention, its mask made by
    ``torch.vmap`` over positions: [Note: vmap regions]) and a decoder whose layers attend to
    themselves and to the encoder in one merged attention; text only (its vision tower idle)."""
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4,
                layer_types=["sliding_attention"] * 2)  # 2 layers: most parameters train
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    cfg = hf.T5Gemma2Config(encoder=dict(text_config=text, vision_config=vision, mm_tokens_per_image=4),
                            decoder=dict(text), image_token_index=IMAGE_TOKEN)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.T5Gemma2ForConditionalGeneration(cfg))), "t5gemma2")


# --- the sweep of 2026-12-05, fourth -----------------------------------------------------------

class _Output(nn.Module):
    """A model taking its inputs by position, named ``names``, and returning the outputs
    ``fields`` of what it returns (one tensor for one field, else a tuple)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], fields: tuple[str, ...], **fixed: Any) -> None:
        super().__init__()
        self.model, self.names, self.fields, self.fixed = model, names, fields, fixed

    def forward(self, *inputs: torch.Tensor) -> Any:
        out = self.model(**dict(zip(self.names, inputs)), **self.fixed)
        got = tuple(getattr(out, f) for f in self.fields)
        return got[0] if len(got) == 1 else got


def patchtsmixer() -> ModelSpec:
    """PatchTSMixer: each channel's series cut into patches, MLP-Mixer layers mixing along the
    patches, within each patch and across the channels, each gated by a softmax over its
    features, with a small self-attention over the patches beside it; a forecast of 4 steps."""
    cfg = hf.PatchTSMixerConfig(num_input_channels=2, context_length=16, prediction_length=4, patch_length=4,
                                patch_stride=2, d_model=16, num_layers=2, expansion_factor=2, dropout=0.0,
                                head_dropout=0.0, mode="mix_channel", gated_attn=True, self_attn=True,
                                self_attn_heads=2, scaling="std", loss="mse")
    model = _seeded(lambda: _Output(hf.PatchTSMixerForPrediction(cfg), ("past_values",), ("prediction_outputs",)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        series = torch.randn(n * BATCH, 20, 2, generator=g).cumsum(1)
        return (series[:, :16],), series[:, 16:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_mse, batch=batch, name="patchtsmixer")


def bigbird_pegasus() -> ModelSpec:
    """BigBird-Pegasus: a Pegasus encoder-decoder whose encoder attends block-sparsely (blocks
    of one token: the first and last global, a sliding band, one random block per query), the
    decoder with full attention."""
    cfg = hf.BigBirdPegasusConfig(**_S2S, attention_type="block_sparse", block_size=1, num_random_blocks=1)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.BigBirdPegasusForConditionalGeneration(cfg))), "bigbird-pegasus")


def granitemoehybrid() -> ModelSpec:
    """Granite 4 (GraniteMoeHybrid): Mamba-2 and attention layers, each followed by a routed
    mixture of experts with a shared expert, and Granite's multipliers on the embeddings,
    the residuals, the attention scores and the logits."""
    cfg = hf.GraniteMoeHybridConfig(**_DECODER, layer_types=["mamba", "attention"], num_local_experts=4,
                                    num_experts_per_tok=2, shared_intermediate_size=32, mamba_n_heads=4,
                                    mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1, mamba_chunk_size=4,
                                    mamba_expand=2, router_aux_loss_coef=0.0, output_router_logits=False)
    return _tokens(_seeded(lambda: hf.GraniteMoeHybridForCausalLM(cfg)), "granitemoehybrid")


def dots1() -> ModelSpec:
    """dots.llm1: DeepSeek-V3's mixture (a dense first layer, then 4 routed experts in 2 groups,
    group-limited top 2 with a sigmoid router and a shared expert) on attention with norms on
    the queries and keys."""
    cfg = hf.Dots1Config(**_DECODER, moe_intermediate_size=16, n_shared_experts=1, n_routed_experts=4,
                         num_experts_per_tok=2, first_k_dense_replace=1, n_group=2, topk_group=1)
    return _tokens(_seeded(lambda: hf.Dots1ForCausalLM(cfg)), "dots1")


def hunyuan_moe() -> ModelSpec:
    """Hunyuan MoE V1: norms on the queries and keys after the rotary embedding, a softmax
    router picking 2 of 4 experts beside a shared MLP in every layer."""
    cfg = hf.HunYuanMoEV1Config(**_DECODER, num_experts=4, moe_topk=2, head_dim=8)
    return _tokens(_seeded(lambda: hf.HunYuanMoEV1ForCausalLM(cfg)), "hunyuan-moe")


def poolformer() -> ModelSpec:
    """PoolFormer: MetaFormer blocks whose token mixer is an average pool minus its input
    (no attention), group norm, layer scale, overlapping patch embeddings between stages."""
    cfg = hf.PoolFormerConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], patch_sizes=[3, 3],
                              strides=[2, 2], padding=[1, 1], num_encoder_blocks=2, pool_size=3, mlp_ratio=2.0,
                              drop_path_rate=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.PoolFormerForImageClassification(cfg)), "poolformer", (3, 16, 16), 5)


def vivit() -> ModelSpec:
    """ViViT: a video cut into tubelets (a 3-d conv over 2 frames × 4 × 4 pixels), a CLS token
    and joint space-time attention over every tubelet."""
    cfg = hf.VivitConfig(image_size=16, num_frames=4, tubelet_size=[2, 4, 4], num_channels=3, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, num_labels=5)
    return _classes(_seeded(lambda: hf.VivitForVideoClassification(cfg)), "vivit", (4, 3, 16, 16), 5)


def swin2sr() -> ModelSpec:
    """Swin2SR super-resolution: the image padded to whole windows and its mean taken off, Swin
    V2 blocks inside residual groups that end in a conv, a pixel-shuffle upsampler to twice
    the size; trained on the MSE to the full-size image."""
    cfg = hf.Swin2SRConfig(image_size=16, patch_size=1, num_channels=3, embed_dim=16, depths=[1, 1],
                           num_heads=[2, 2], window_size=4, upscale=2, upsampler="pixelshuffle", drop_path_rate=0.0,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = _seeded(lambda: _Output(hf.Swin2SRForImageSuperResolution(cfg), ("pixel_values",), ("reconstruction",)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        full = torch.rand(n * BATCH, 3, 32, 32, generator=g)
        return (F.avg_pool2d(full, 2),), full

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_mse, batch=batch, name="swin2sr")


def _per_pixel(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


def upernet() -> ModelSpec:
    """UperNet semantic segmentation: a ConvNeXt backbone's two stages, a pyramid pooling module
    (adaptive average pools at 1 × 1 and 2 × 2, upsampled back) on the last, a feature pyramid
    fusing top-down, logits per pixel upsampled to the image; trained on a class per pixel."""
    backbone = hf.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                 out_features=["stage1", "stage2"])
    cfg = hf.UperNetConfig(backbone_config=backbone, hidden_size=16, pool_scales=[1, 2], use_auxiliary_head=False,
                           num_labels=5)
    model = _seeded(lambda: _Output(hf.UperNetForSemanticSegmentation(cfg), ("pixel_values",), ("logits",)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        return (pixels,), torch.randint(0, 5, (n * BATCH, 16, 16), generator=g)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_per_pixel, batch=batch, name="upernet")


def _masked_patches(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """ViT-MAE's loss: the MSE of the predicted pixels of each 4 × 4 patch it hid."""
    pixels, hidden = output  # (batch, 16 patches, 48), (batch, 16): 1 where hidden
    b = target.shape[0]
    patches = target.reshape(b, 3, 4, 4, 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(b, 16, 48)
    return (((pixels - patches) ** 2).mean(-1) * hidden).sum() / hidden.sum()


def vit_mae() -> ModelSpec:
    """ViT-MAE pre-training: half of each image's patches hidden at random in every forward
    (noise drawn per sample, argsorted, the kept patches gathered), a ViT over the rest, and a
    small decoder over mask tokens put back in place predicting the hidden patches' pixels."""
    cfg = hf.ViTMAEConfig(**_VISION, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=32, mask_ratio=0.5,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    def build() -> nn.Module:
        model = hf.ViTMAEForPreTraining(cfg)
        # Hugging Face leaves the fixed sin-cos positions and the mask token at zero when it
        # draws the weights itself (every hidden patch's token alike: its decoder's queries
        # and keys got no gradient); set them as MAE does
        model.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
        model.vit.embeddings.initialize_weights()
        model.decoder.initialize_weights(model.vit.embeddings.patch_embeddings.num_patches)
        nn.init.normal_(model.decoder.mask_token, std=0.02)
        return _Output(model, ("pixel_values",), ("logits", "mask"))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        return (pixels,), pixels

    return ModelSpec(model=_seeded(build), example_inputs=batch(1)[0], loss_fn=_masked_patches, batch=batch,
                     name="vit-mae")


def yolos() -> ModelSpec:
    """YOLOS: a ViT with 4 learned detection tokens beside the patches (no backbone, no
    decoder), class and box heads on those tokens; DETR's set loss."""
    cfg = hf.YolosConfig(**{**_VISION, "image_size": [16, 16]}, num_detection_tokens=DETR_QUERIES,
                         num_labels=DETR_CLASSES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         use_mid_position_embeddings=False, auxiliary_loss=False)
    model = _seeded(lambda: _Detr(hf.YolosForObjectDetection(cfg)))

    batch = functools.partial(_detections, image=16)
    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_set_loss, batch=batch, name="yolos")


def sew() -> ModelSpec:
    """SEW: Wav2Vec2's conv feature extractor, the sequence squeezed to half its length (an
    average pool) for the encoder and upsampled back after it, mean-pooled into a classifier."""
    cfg = hf.SEWConfig(**_AUDIO, squeeze_factor=2, final_dropout=0.0, feat_extract_norm="group")
    return _classes(_seeded(lambda: hf.SEWForSequenceClassification(cfg)), "sew", (400,), 5)


def xclip() -> ModelSpec:
    """X-CLIP: a CLIP vision tower run on each frame with a message token per frame that
    attends across frames, a transformer integrating the frames, a prompt generator whose
    text queries cross-attend to the video; trained contrastively with the text tower."""
    vision = dict(_VISION, num_frames=2, mit_hidden_size=32, mit_intermediate_size=64, mit_num_hidden_layers=1,
                  mit_num_attention_heads=4)
    cfg = hf.XCLIPConfig(text_config=dict(_TOWER, vocab_size=VOCAB, max_position_embeddings=SEQ),
                         vision_config=vision, projection_dim=32, prompt_layers=1, prompt_num_attention_heads=4,
                         prompt_attention_dropout=0.0, prompt_projection_dropout=0.0)
    model = _seeded(lambda: _Output(hf.XCLIPModel(cfg), ("input_ids", "pixel_values"), ("logits_per_video",)))

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        text = torch.randint(0, VOCAB, (n * BATCH, SEQ), generator=g)
        video = torch.randn(n * BATCH, 2, 3, 16, 16, generator=g)
        return (text, video), torch.arange(BATCH).repeat(n)  # the i-th text goes with the i-th video

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=loss, batch=batch, name="xclip")


class _Git(nn.Module):
    """GIT taking (pixels, token ids) by position, returning the text positions' logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=pixels, input_ids=ids, use_cache=False).logits
        return logits[:, -ids.shape[1]:]


def git() -> ModelSpec:
    """GIT: a CLIP vision tower's patches projected and put before the text in one BERT-like
    transformer, whose mask lets the image attend within itself and the text to the image and
    causally to itself; captioning by the next token."""
    cfg = hf.GitConfig(vision_config=dict(_VISION), vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, use_cache=False, bos_token_id=1,
                       eos_token_id=2)
    return _caption(_seeded(lambda: _Git(hf.GitForCausalLM(cfg))), "git", _images)


def _patch_boxes(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """A sigmoid loss on each patch's score for each text query, and the L1 distance of the
    box each patch predicts (``target``: per patch, a label per query, then a box)."""
    logits, boxes = output  # (batch, patches, queries), (batch, patches, 4)
    queries = logits.shape[-1]
    return (F.binary_cross_entropy_with_logits(logits, target[..., :queries])
            + F.l1_loss(boxes, target[..., queries:]))


def owlvit() -> ModelSpec:
    """OWL-ViT open-vocabulary detection: a CLIP vision tower whose every patch predicts a box
    (an MLP plus a bias from its grid position) and scores it against the text tower's
    embedding of each query (2 per image), with a learned shift and scale per patch."""
    text = dict(_TOWER, vocab_size=VOCAB, max_position_embeddings=SEQ, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = hf.OwlViTConfig(text_config=text,
                          vision_config=dict(_VISION), projection_dim=32)
    model = _seeded(lambda: _Output(hf.OwlViTForObjectDetection(cfg), ("input_ids", "pixel_values"),
                                    ("logits", "pred_boxes")))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        queries = torch.randint(3, VOCAB, (n * BATCH * 2, SEQ), generator=g)
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        labels = (torch.rand(n * BATCH, 16, 2, generator=g) > 0.8).float()
        return (queries, pixels), torch.cat([labels, torch.rand(n * BATCH, 16, 4, generator=g)], -1)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_patch_boxes, batch=batch, name="owlvit")


class _Mllama(nn.Module):
    """Mllama taking (pixels, token ids) by position: one image of one tile per sample, which
    every text position may attend to."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        ones = torch.ones(b, 1, dtype=torch.long)
        return self.model(pixel_values=pixels[:, None, None], input_ids=ids, aspect_ratio_ids=ones,
                          aspect_ratio_mask=ones[:, :, None], cross_attention_mask=ones[:, None, :, None].expand(b, n, 1, 1),
                          use_cache=False).logits


def mllama() -> ModelSpec:
    """Mllama (Llama 3.2 Vision): a vision tower over tiles (gated position and tile
    embeddings, a local and a gated global encoder, the hidden states of chosen layers
    concatenated) read by a text decoder through gated cross-attention layers between its
    self-attention ones."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, num_attention_heads=4,
                  image_size=16, patch_size=8, max_num_tiles=1, intermediate_layers_indices=[0], vision_output_dim=64,
                  supported_aspect_ratios=[[1, 1]])
    text = dict(vocab_size=VOCAB + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, cross_attention_layers=[1], max_position_embeddings=64, use_cache=False,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = hf.MllamaConfig(vision_config=vision, text_config=text, image_token_index=VOCAB)

    def build() -> nn.Module:
        model = hf.MllamaForConditionalGeneration(cfg)
        # the gates start at zero (tanh(0) = 0: the image reaches nothing, no gradient reaches
        # the vision tower); open them as a trained model has
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                nn.init.constant_(p, 0.5)
        return _Mllama(model)

    return _caption(_seeded(build), "mllama", _images)


def _detections(n: int, step: int = 0, image: int = 32) -> tuple[tuple[torch.Tensor], torch.Tensor]:
    """``image`` × ``image`` pictures and each one's objects (rows of class, cx, cy, w, h), as DETR's."""
    g = generator(n, step, 0)
    pixels = torch.randn(n * BATCH, 3, image, image, generator=g)
    classes = torch.randint(0, DETR_CLASSES, (n * BATCH, DETR_OBJECTS, 1), generator=g)
    centre = torch.rand(n * BATCH, DETR_OBJECTS, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n * BATCH, DETR_OBJECTS, 2, generator=g) * 0.3 + 0.1
    return (pixels,), torch.cat([classes.float(), centre, size], -1)


def _sigmoid_set_loss(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """DETR's set loss for sigmoid class logits, which have no "no object" class: each gets a
    zero logit in that place."""
    logits, boxes = output
    return _set_loss((torch.cat([logits, torch.zeros_like(logits[..., :1])], -1), boxes), target)


def deformable_detr() -> ModelSpec:
    """Deformable DETR: a ResNet's two stages (frozen batch norm) as two feature levels, and
    multi-scale deformable attention in the encoder and the decoder: each query samples 2
    points per head and level around its reference point (bilinear, ``grid_sample``) at
    offsets and with weights it predicts; sigmoid class logits, the set loss."""
    backbone = hf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                               layer_type="basic", out_features=["stage1", "stage2"])
    # 2 decoder layers: with one, loading ties the box heads of no other layer and fails
    cfg = hf.DeformableDetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                                  backbone_config=backbone, num_queries=DETR_QUERIES, d_model=32, encoder_layers=1,
                                  decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                  encoder_ffn_dim=32, decoder_ffn_dim=32, num_feature_levels=2, encoder_n_points=2,
                                  decoder_n_points=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                  auxiliary_loss=False, num_labels=DETR_CLASSES)
    model = _seeded(lambda: _Detr(hf.DeformableDetrForObjectDetection(cfg)))
    # as DETR's: in training each encoder layer clamps its output if any of it is not finite,
    # a branch on the data; with no dropout, evaluation mode differs in nothing else
    for layer in model.model.model.encoder.layers:
        layer.eval()
    return ModelSpec(model=model, example_inputs=_detections(1)[0], loss_fn=_sigmoid_set_loss, batch=_detections,
                     name="deformable-detr")


class _Sam(nn.Module):
    """SAM taking (pixels, one point per image) by position, the point a foreground one;
    returns its 3 masks' logits and their predicted IoU."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixels, input_points=points,
                         input_labels=torch.ones(points.shape[:3], dtype=torch.long), multimask_output=True)
        return out.pred_masks[:, 0], out.iou_scores[:, 0]


def _masks_and_iou(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """SAM's loss, small: each mask's per-pixel BCE, and the MSE of its predicted IoU to the
    IoU it got."""
    masks, iou = output  # (batch, 3, 32, 32), (batch, 3)
    wanted = F.interpolate(target, size=masks.shape[-2:]).expand_as(masks)
    got = (masks > 0).float()
    actual = (got * wanted).sum((-1, -2)) / ((got + wanted).clamp(max=1).sum((-1, -2))).clamp(min=1)
    return F.binary_cross_entropy_with_logits(masks, wanted) + F.mse_loss(iou, actual)


def sam() -> ModelSpec:
    """SAM: a ViT image encoder (windowed attention with relative positions, a global layer, a
    conv neck), a prompt encoder (a point by random Fourier features), a two-way transformer
    between the prompt's tokens and the image embedding, 3 masks from hypernetwork MLPs over
    the embedding upsampled by transposed convs, and their predicted IoU."""
    vision = dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                  image_size=32, patch_size=4, window_size=2, global_attn_indexes=[1], num_pos_feats=8,
                  initializer_range=0.2)
    prompt = dict(hidden_size=16, image_size=32, patch_size=4, mask_input_channels=4, image_embedding_size=8)
    mask = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16,
                num_multimask_outputs=3)
    # weights drawn with a std of 0.02 give masks' logits near 1e-5: every gradient below the
    # comparison's tolerance
    cfg = hf.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=mask,
                       initializer_range=0.2)
    model = _seeded(lambda: _Sam(hf.SamModel(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        pixels = torch.randn(n * BATCH, 3, 32, 32, generator=g)
        points = torch.rand(n * BATCH, 1, 1, 2, generator=g) * 32
        return (pixels, points), (pixels.mean(1, keepdim=True) > 0).float()

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_masks_and_iou, batch=batch, name="sam")

# --- the sweep of 2026-12-08 -------------------------------------------------------------------

def mobilebert() -> ModelSpec:
    """MobileBERT masked LM: a bottleneck transformer (each layer projects 32 down to 16 and
    back, attention reads the bottleneck), two stacked feed-forward networks a layer, NoNorm
    (an elementwise scale and shift, no statistics), a trigram embedding (three neighbours'
    embeddings concatenated by padded slices)."""
    cfg = hf.MobileBertConfig(**_ENCODER, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16,
                              num_feedforward_networks=2, normalization_type="no_norm")
    return _tokens(_seeded(lambda: hf.MobileBertForMaskedLM(cfg)), "mobilebert", shift=False)


def mra() -> ModelSpec:
    """MRA masked LM: multi-resolution attention: block averages score every pair of blocks,
    the top-scoring pairs are attended at full resolution and the rest from the low-resolution
    scores (in torch, without its CUDA kernels: a top-k over blocks, gathers and scatters)."""
    cfg = hf.MraConfig(**_ENCODER, block_per_row=2, approx_mode="full")
    return _tokens(_seeded(lambda: hf.MraForMaskedLM(cfg)), "mra", shift=False)


def umt5() -> ModelSpec:
    """UMT5: T5 whose every layer has its own relative position bias (T5 shares the first
    layer's), gated-GELU feed-forward, an untied output projection scaled by no d_model."""
    cfg = hf.UMT5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                        num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0, use_cache=False)
    return _reversal(_seeded(lambda: _Seq2Seq(hf.UMT5ForConditionalGeneration(cfg))), "umt5")


def bit() -> ModelSpec:
    """BiT: a ResNet-v2 of weight-standardised convs (each weight normalised in forward),
    group norm, TensorFlow's SAME padding computed from each input's size, pre-activation
    bottlenecks."""
    cfg = hf.BitConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck",
                       global_padding="SAME", num_groups=4, num_labels=5)
    return _classes(_seeded(lambda: hf.BitForImageClassification(cfg)), "bit", (3, 16, 16), 5)


class _Keywords(nn.Module):
    """A model taking its inputs by position and passing them by the names ``names``;
    returns the output's ``field``."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], field: str = "logits") -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.field = field

    def forward(self, *inputs: torch.Tensor) -> Any:
        return getattr(self.model(**dict(zip(self.names, inputs))), self.field)


def markuplm() -> ModelSpec:
    """MarkupLM token classification: each token's XPath in the page (8 levels of tag and
    subscript ids, embedded per level, concatenated and projected) added to its embedding."""
    cfg = hf.MarkupLMConfig(**_ENCODER, max_depth=8, xpath_unit_hidden_size=8, max_xpath_tag_unit_embeddings=16,
                            max_xpath_subs_unit_embeddings=16, num_labels=5, pad_token_id=1)
    model = _seeded(lambda: _Keywords(hf.MarkupLMForTokenClassification(cfg),
                                      ("input_ids", "xpath_tags_seq", "xpath_subs_seq")))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        g = generator(n, step, 0)
        ids = torch.randint(3, VOCAB, (n * BATCH, SEQ), generator=g)
        tags = torch.randint(0, 16, (n * BATCH, SEQ, 8), generator=g)
        subs = torch.randint(0, 16, (n * BATCH, SEQ, 8), generator=g)
        return (ids, tags, subs), torch.randint(0, 5, (n * BATCH, SEQ), generator=g)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch, name="markuplm")


def lilt() -> ModelSpec:
    """LiLT token classification: a text stream and a layout stream of its boxes (a narrower
    transformer) in parallel, each layer's attention scores summed across the two."""
    cfg = hf.LiltConfig(**{**_ENCODER, "hidden_size": 24, "intermediate_size": 48}, channel_shrink_ratio=2,
                        max_2d_position_embeddings=128, num_labels=5, pad_token_id=1)
    model = _seeded(lambda: _Keywords(hf.LiltForTokenClassification(cfg), ("input_ids", "bbox")))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        ids = torch.randint(3, VOCAB, (n * BATCH, SEQ), generator=g)
        xy = torch.randint(0, 64, (n * BATCH, SEQ, 2), generator=g)
        wh = torch.randint(1, 60, (n * BATCH, SEQ, 2), generator=g)
        return (ids, torch.cat([xy, xy + wh], -1)), torch.randint(0, 5, (n * BATCH, SEQ), generator=g)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch, name="lilt")


def siglip2() -> ModelSpec:
    """SigLIP 2 (NaFlex): images as sequences of flattened patches with a patch mask and each
    image's grid size; the learned position grid is resized to that size by bilinear
    interpolation per image; SigLIP's towers and sigmoid loss otherwise."""
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = hf.Siglip2Config(text_config=dict(tower, vocab_size=VOCAB, max_position_embeddings=SEQ),
                           vision_config=dict(tower, patch_size=4, num_patches=16))
    model = _seeded(lambda: _Keywords(hf.Siglip2Model(cfg), ("input_ids", "pixel_values", "pixel_attention_mask",
                                                                 "spatial_shapes"), "logits_per_image"))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        g = generator(n, step, 0)
        text = torch.randint(0, VOCAB, (n * BATCH, SEQ), generator=g)
        patches = torch.randn(n * BATCH, 16, 3 * 4 * 4, generator=g)  # 4x4 patches of 4x4 pixels
        return ((text, patches, torch.ones(n * BATCH, 16, dtype=torch.long), torch.tensor([[4, 4]] * (n * BATCH))),
                torch.arange(BATCH).repeat(n))

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_sigmoid_logits, batch=batch, name="siglip2")


def _sigmoid_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss of the image-text logits alone."""
    return _sigmoid_pairs({"logits_per_image": logits}, target)


def vitmatte() -> ModelSpec:
    """ViTMatte: a ViTDet backbone (windowed and global attention with decomposed relative
    positions, interpolated absolute ones) over an image and its trimap (4 channels), a conv
    detail stream of the input at 3 scales fused into the upsampled features, a sigmoid alpha
    matte (MSE)."""
    backbone = hf.VitDetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                               image_size=32, patch_size=16, num_channels=4, pretrain_image_size=32,
                               window_size=2, window_block_indices=[0], use_relative_position_embeddings=True,
                               out_features=["stage2"])
    cfg = hf.VitMatteConfig(backbone_config=backbone, hidden_size=32, convstream_hidden_sizes=[8, 8, 16],
                            fusion_hidden_sizes=[16, 8, 8, 8])
    model = _seeded(lambda: _Keywords(hf.VitMatteForImageMatting(cfg), ("pixel_values",), "alphas"))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        pixels = torch.randn(n * BATCH, 4, 32, 32, generator=g)
        return (pixels,), (pixels[:, :1] > 0).float()

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_mse, batch=batch, name="vitmatte")


def depth_pro() -> ModelSpec:
    """Depth Pro: the image cut into overlapping patches at two scales (and the whole image
    downscaled), one DINOv2 encoding every patch and a second the whole image, the patches'
    features merged back into maps, upsampled by transposed convs and fused as DPT's."""
    dinov2 = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, image_size=8, patch_size=4)
    cfg = hf.DepthProConfig(patch_size=8, scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.0],
                            scaled_images_feature_dims=[16, 16], intermediate_hook_ids=[1],
                            intermediate_feature_dims=[16], image_model_config=dinov2, patch_model_config=dinov2,
                            fov_model_config={**dinov2, "num_hidden_layers": 1}, use_fov_model=False,
                            fusion_hidden_size=16)
    model = _seeded(lambda: _Depth(hf.DepthProForDepthEstimation(cfg)))

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, 0)
        pixels = torch.randn(n * BATCH, 3, 16, 16, generator=g)
        return (pixels,), pixels.mean(1).abs()

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=_depth_mse, batch=batch, name="depth-pro")


ZOO: dict[str, Callable[[], ModelSpec]] = {
    "t5": t5, "mixtral": mixtral, "qwen2-moe": qwen2_moe, "vit": vit, "convnext": convnext,
    "resnet": resnet, "wav2vec2": wav2vec2, "whisper": whisper, "gpt-neox": gpt_neox, "mistral": mistral, "qwen2": qwen2,
    "distilbert": distilbert, "falcon": falcon, "gemma2": gemma2, "bloom": bloom, "deberta": deberta,
    "bart": bart, "swin": swin, "segformer": segformer, "modernbert": modernbert, "funnel": funnel,
    "mamba": mamba, "jamba": jamba, "mobilevit": mobilevit, "llava": llava, "clip": clip,
    "deepseek-v3": deepseek_v3,
    "opt": opt, "phi3": phi3, "gemma3": gemma3, "qwen3-moe": qwen3_moe, "phimoe": phimoe, "olmoe": olmoe,
    "granitemoe": granitemoe, "mamba2": mamba2, "falcon-mamba": falcon_mamba,
    "recurrent-gemma": recurrent_gemma, "zamba2": zamba2, "rwkv": rwkv, "xlnet": xlnet,
    "pegasus": pegasus, "m2m100": m2m100, "longt5": longt5, "speech2text": speech2text,
    "hubert": hubert, "speecht5": speecht5, "beit": beit, "dinov2": dinov2, "swinv2": swinv2,
    "efficientnet": efficientnet, "regnet": regnet, "mobilenet-v2": mobilenet_v2,
    "patchtst": patchtst, "perceiver": perceiver, "detr": detr,
    "qwen3-next": qwen3_next, "gemma3n": gemma3n, "gpt-oss": gpt_oss, "llama4": llama4,
    "bamba": bamba, "lfm2": lfm2, "ernie4.5-moe": ernie4_5_moe, "smollm3": smollm3,
    "big-bird": big_bird, "esm": esm, "fnet": fnet,
    "convbert": convbert, "mpnet": mpnet, "canine": canine,
    "levit": levit, "cvt": cvt, "videomae": videomae, "data2vec-vision": data2vec_vision,
    "dpt": dpt, "siglip": siglip, "wav2vec2-conformer": wav2vec2_conformer,
    "unispeech": unispeech, "dac": dac, "informer": informer,
    "time-series-transformer": time_series_transformer, "mask2former": mask2former,
    "convnext-v2": convnext_v2, "hiera": hiera, "ast": ast, "wavlm": wavlm, "timesformer": timesformer,
    "clap": clap, "blip2": blip2, "kosmos2": kosmos2, "pix2struct": pix2struct, "layoutlmv3": layoutlmv3,
    "albert": albert, "prophetnet": prophetnet, "t5gemma": t5gemma, "deepseek-v2": deepseek_v2,
    "minimax": minimax, "falcon-h1": falcon_h1,
    "gpt-bigcode": gpt_bigcode, "mpt": mpt, "glm4-moe": glm4_moe, "longcat-flash": longcat_flash,
    "squeezebert": squeezebert, "pvt-v2": pvt_v2, "focalnet": focalnet, "musicgen": musicgen,
    "xlstm": xlstm, "zamba": zamba, "timesfm": timesfm, "groupvit": groupvit, "paligemma": paligemma,
    "trocr": trocr, "parakeet": parakeet, "moonshine": moonshine, "univnet": univnet,
    "decision-transformer": decision_transformer,
    "diffllama": diffllama, "doge": doge, "deepseek-v3.2": deepseek_v32, "deepseek-v4": deepseek_v4,
    "kimi-linear": kimi_linear, "nemotron-h": nemotron_h, "hrm-text": hrm_text, "gemma4": gemma4, "zaya": zaya,
    "yoso": yoso, "pegasus-x": pegasus_x, "swiftformer": swiftformer, "mobilevitv2": mobilevitv2,
    "wav2vec2-bert": wav2vec2_bert, "t5gemma2": t5gemma2,
    "patchtsmixer": patchtsmixer, "bigbird-pegasus": bigbird_pegasus, "granitemoehybrid": granitemoehybrid,
    "dots1": dots1, "hunyuan-moe": hunyuan_moe, "poolformer": poolformer, "vivit": vivit,
    "swin2sr": swin2sr, "upernet": upernet, "vit-mae": vit_mae, "yolos": yolos, "sew": sew, "xclip": xclip,
    "git": git, "owlvit": owlvit, "mllama": mllama, "deformable-detr": deformable_detr, "sam": sam,
    "mobilebert": mobilebert, "mra": mra, "umt5": umt5, "bit": bit, "markuplm": markuplm, "lilt": lilt,
    "siglip2": siglip2, "vitmatte": vitmatte, "depth-pro": depth_pro,
}
"""Every zoo model by name: a fresh, identically initialised copy per call."""


HASH_ORDERED = {"modernbert", "gemma3", "gemma3n", "llama4", "gemma4"}
"""Models whose traced node order depends on Python's string hashes: ModernBERT's and Gemma
3's (and Gemma 3n's and 4's) forward compute their rotary tables ``for layer_type in set(config.layer_types)``,
and Llama 4's its chunked and full attention masks the same way, so two
processes with different ``PYTHONHASHSEED`` trace the sliding and the global tables in either order,
and a rank refuses the plan (a graph fingerprint of another order). The autopipe commands
fix the seed ([Note: one hash seed] in ``autopipe.cli.main``), but this job plans in the test
process, so these are traced and split in one process only."""

ONE_STEP = ("levit", "groupvit")
"""Zoo models trained one step, not two: LeViT's batch norms normalise 2 rows a channel (its
classifier's over the micro-batch), which turns rounding into large differences from the
second step on. GroupViT's first step equals one process's; after its second, one of the 64
elements of a grouping block's weight differed by 2.6e-6 against 1.9e-6 allowed (2026-12-05:
losses equal, and its gradients equal to rounding at every cut the split test makes). Cut where a measured plan of the suite cut it (2026-12-03, after
``add__26``), its weights after one step differ from one process's by 7e-8 (a split model
sums in another order) and after two by 3e-3, with stop 31's code (f48a6b2) as with
today's; cut after ``add__24`` (CI's plan) two steps stay within the comparison's
tolerance. Which cut a measured plan picks varies from run to run."""
ZOO_CASES = {c.name: c for c in (Case(name, 2, zoo=True, profile="measure",
                                      steps=1 if name in ONE_STEP else 2, microbatches=4)
                                 for name in ZOO if name not in HASH_ORDERED)}
"""Each zoo model measured on this CPU, planned into 2 stages (1F1B, 4 micro-batches) and
trained 2 steps, ``ONE_STEP`` ones 1 (tests/runtime_worker.py runs them by name)."""

SPLIT_BACKWARD = ("t5", "whisper", "clip")
"""Zoo models also trained with ZBV (split backward), planned on an estimated profile (the
same cuts every run): their later stages send on values made from weights alone (T5's
relative position bias, Whisper's decoder positions), which torch's own split backward
left without gradient ([Note: split backward] in ``autopipe.runtime.split_backward``);
CLIP's last stage returns its text and image embeddings, which its similarity's matmul
also saves for the weight pass, and which torch detaches in place after the input pass
(``sendable`` in ``autopipe.runtime.split``: the rank stopped in its first weight pass)."""
ZOO_CASES.update({c.name: c for c in (Case(name, 2, "zbv", zoo=True, steps=2, microbatches=4)
                                      for name in SPLIT_BACKWARD)})

OTHER_SCHEDULES = (Case("deepseek-v3", 2, "interleaved-1f1b", zoo=True, steps=2, microbatches=4),
                   Case("llava", 2, "dualpipev", zoo=True, steps=2, microbatches=4),
                   Case("mamba", 2, zoo=True, steps=2, microbatches=4, recompute="full"),
                   Case("rwkv", 2, zoo=True, steps=2, microbatches=4, recompute="full"),
                   Case("albert", 2, "interleaved-1f1b", zoo=True, steps=2, microbatches=4))
"""Zoo models also trained with the other planned schedules, on an estimated profile: 2 ranks
of 2 chunks each (interleaved 1F1B: DeepSeek-V3's latent attention and routed experts),
DualPipeV's overlapped pairs (LLaVA: a vision tower feeding a language model) and 1F1B with
every block recomputed (Mamba's selective scan; RWKV, whose state is written slice by slice
after the blocks that read it: [Note: recomputed regions] in ``autopipe.runtime.recompute``),
and ALBERT, whose one shared layer every chunk of both ranks holds, interleaved.
A sweep of the 26 models trained with 1F1B above, each with all three, trained like one
process (2026-12-02); these keep it in the suite."""
ZOO_CASES.update({c.name: c for c in OTHER_SCHEDULES})

LOSS_READS_ALL = Case("patchtst", 2, "zb-h1", zoo=True, steps=2, microbatches=4)
"""PatchTST under zb-h1 cut after its first node (``ones_like``): the last stage receives
nothing with a gradient, so its W runs the whole loss, whose MSE saved the model's output,
which torch detaches in place after I ([Note: split backward]). ``test_zoo.py`` trains it so
with its own plan, not in the zoo job."""

