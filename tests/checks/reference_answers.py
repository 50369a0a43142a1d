"""A right answer to every exercise, written as a learner would (mostly with the companion's own
functions): each checker must accept it, and the mutation suites derive wrong answers from it."""

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from companion.attention import causal_mask, scaled_dot_product_attention, sliding_window_mask
from companion.bpe import merge
from companion.data import recall_task
from companion.decoding import filter_top_k, filter_top_p, new_caches
from companion.positions import offset_rotation, sinusoidal_table
from companion.predecessors import causal_conv1d, receptive_field
from companion.training import lr_at, mask_tokens, mean_pool


# ---------------------------------------------------------------- chapter 1
def mlp_parameter_count(vocab, window, d_model, d_hidden):
    return (
        vocab * d_model + window * d_model * d_hidden + d_hidden + d_hidden * window * vocab + window * vocab
    )


def rnn_step(x, h, w_xh, w_hh, bias):
    return torch.tanh(
        einsum(x, w_xh, "batch d_in, d_model d_in -> batch d_model")
        + einsum(h, w_hh, "batch d_prev, d_model d_prev -> batch d_model")
        + bias
    )


def recall_batch(batch, length, distance, vocab, seed=0):
    return recall_task(batch, length, distance, vocab, seed)


# ---------------------------------------------------------------- chapter 2
def attention_scores(q, k):
    scores = einsum(q, k, "batch heads q_pos d_head, batch heads k_pos d_head -> batch heads q_pos k_pos")
    return scores / math.sqrt(q.shape[-1])


def attention_weights(scores, mask=None):
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def scaled_dot_product(q, k, v, mask=None):
    weights = attention_weights(attention_scores(q, k), mask)
    return einsum(weights, v, "batch heads q_pos k_pos, batch heads k_pos d_head -> batch heads q_pos d_head")


def split_heads(x, heads):
    return rearrange(x, "batch seq (heads d_head) -> batch heads seq d_head", heads=heads)


def merge_heads(x):
    return rearrange(x, "batch heads seq d_head -> batch seq (heads d_head)")


def multi_head_attention(x, mha, causal=False):
    q, k, v = (split_heads(layer(x), mha.heads) for layer in (mha.to_q, mha.to_k, mha.to_v))
    return mha.to_out(merge_heads(scaled_dot_product(q, k, v, causal_mask(x.shape[1]) if causal else None)))


# ---------------------------------------------------------------- chapter 3
def one_hot_embedding(ids, weight):
    return F.one_hot(ids, num_classes=weight.shape[0]).to(weight.dtype) @ weight


def permutation_gap(layer, x, perm):
    return (layer(x[:, perm]) - layer(x)[:, perm]).abs().max().item()


def rotary(x, positions):
    d = x.shape[-1]
    angles = positions[:, None].double() * 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    cos, sin = angles.cos().float(), angles.sin().float()
    even, odd = x[..., 0::2], x[..., 1::2]
    turned = torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1)
    return rearrange(turned, "... half two -> ... (half two)")


# ---------------------------------------------------------------- chapter 4
def layer_norm(x, weight, bias, eps=1e-5):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def batch_norm_tokens(x, eps=1e-5):
    mean, var = x.mean((0, 1), keepdim=True), x.var((0, 1), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def residual(x, sublayer, norm, placement):
    return x + sublayer(norm(x)) if placement == "pre" else norm(x + sublayer(x))


def feed_forward(x, ff):
    return ff.down(ff.act(ff.up(x)))


def dropout(x, p, noise, training):
    return x * (noise >= p) / (1 - p) if training else x


# ---------------------------------------------------------------- chapter 5
def encoder_block(x, block):
    h = block.attention_norm(x + block.attention(x))
    return block.feed_forward_norm(h + block.feed_forward(h))


def decoder_block(x, memory, block):
    h = block.attention_norm(x + block.attention(x, causal=True))
    h = block.cross_attention_norm(h + block.cross_attention(h, memory))
    return block.feed_forward_norm(h + block.feed_forward(h))


def next_token_probabilities(hidden, embedding):
    return (hidden[:, -1] @ embedding.T).softmax(-1)


def layer_parameters(d_model, d_ff, cross):
    attention, ff, norm = 4 * (d_model * d_model + d_model), 2 * d_model * d_ff + d_ff + d_model, 2 * d_model
    return 2 * attention + ff + 3 * norm if cross else attention + ff + 2 * norm


# ---------------------------------------------------------------- chapter 6
def greedy_decode(model, src_ids, length, start_id):
    memory = model.encode(src_ids)
    target = torch.full((src_ids.shape[0], 1), start_id)
    for _ in range(length):
        target = torch.cat([target, model.decode(target, memory)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return target[:, 1:]


def append_kv(cache, k, v):
    start, end = cache.length, cache.length + k.shape[2]
    cache.keys[:, :, start:end] = k
    cache.values[:, :, start:end] = v
    cache.length = end
    return cache.keys[:, :, :end], cache.values[:, :, :end]


def incremental_attention(q, k, v):
    return scaled_dot_product_attention(q, k, v, causal=True, fused=False)


def temperature_probabilities(logits, temperature):
    return (logits / temperature).softmax(-1)


def greedy_with_cache(model, prompt_ids, max_new_tokens):
    caches = new_caches(model.config, prompt_ids.shape[0], prompt_ids.shape[1] + max_new_tokens)
    ids, fed = prompt_ids, 0
    for _ in range(max_new_tokens):
        logits = model(ids[:, fed:], caches=caches, start_pos=fed)
        fed = ids.shape[1]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


# ---------------------------------------------------------------- chapter 7
def my_mask_tokens(ids, mask_id, vocab_size, special_ids, generator):
    return mask_tokens(
        ids, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids, generator=generator
    )


def my_next_token_loss(logits, ids, pad_id):
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=pad_id
    )


def my_lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr):
    return lr_at(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)


def my_pool_and_classify(hidden, keep, head):
    return head(mean_pool(hidden, keep))


def my_perplexity(batch_losses, token_counts):
    return math.exp(float((batch_losses * token_counts).sum() / token_counts.sum()))


ANSWERS = {
    "check_mlp_parameter_count": mlp_parameter_count,
    "check_receptive_field": receptive_field,
    "check_causal_conv1d": causal_conv1d,
    "check_rnn_step": rnn_step,
    "check_recall_batch": recall_batch,
    "check_attention_scores": attention_scores,
    "check_attention_weights": attention_weights,
    "check_causal_mask": lambda seq: causal_mask(seq),
    "check_scaled_dot_product": scaled_dot_product,
    "check_sliding_window_mask": sliding_window_mask,
    "check_split_heads": split_heads,
    "check_merge_heads": merge_heads,
    "check_multi_head_attention": multi_head_attention,
    "check_one_hot_embedding": one_hot_embedding,
    "check_equivariance_gap": permutation_gap,
    "check_sinusoidal_table": sinusoidal_table,
    "check_offset_rotation": offset_rotation,
    "check_rotary": rotary,
    "check_layer_norm": layer_norm,
    "check_rms_norm": rms_norm,
    "check_batch_norm_tokens": batch_norm_tokens,
    "check_residual": residual,
    "check_feed_forward": feed_forward,
    "check_dropout": dropout,
    "check_encoder_block": encoder_block,
    "check_decoder_block": decoder_block,
    "check_next_token_probabilities": next_token_probabilities,
    "check_layer_parameters": layer_parameters,
    "check_greedy_decode": greedy_decode,
    "check_cache_append": append_kv,
    "check_incremental_attention": incremental_attention,
    "check_top_k": filter_top_k,
    "check_top_p": filter_top_p,
    "check_temperature": temperature_probabilities,
    "check_greedy_with_cache": greedy_with_cache,
    "check_mask_tokens": my_mask_tokens,
    "check_next_token_loss": my_next_token_loss,
    "check_lr_schedule": my_lr_schedule,
    "check_pool_and_classify": my_pool_and_classify,
    "check_perplexity": my_perplexity,
}

# Checkers whose exercise returns one tensor the later code uses as is: its shape and dtype must match.
TENSOR_RESULTS = [
    "check_causal_conv1d",
    "check_rnn_step",
    "check_attention_scores",
    "check_attention_weights",
    "check_causal_mask",
    "check_scaled_dot_product",
    "check_sliding_window_mask",
    "check_split_heads",
    "check_merge_heads",
    "check_multi_head_attention",
    "check_one_hot_embedding",
    "check_sinusoidal_table",
    "check_offset_rotation",
    "check_rotary",
    "check_layer_norm",
    "check_rms_norm",
    "check_batch_norm_tokens",
    "check_residual",
    "check_feed_forward",
    "check_dropout",
    "check_encoder_block",
    "check_decoder_block",
    "check_next_token_probabilities",
    "check_greedy_decode",
    "check_incremental_attention",
    "check_top_k",
    "check_top_p",
    "check_temperature",
    "check_greedy_with_cache",
    "check_pool_and_classify",
]
# Checkers whose exercise returns a count.
COUNT_RESULTS = ["check_mlp_parameter_count", "check_receptive_field", "check_layer_parameters"]


# ---------------------------------------------------------------- chapter 8
def swiglu(x, w1, w3, w2):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def rms_norm_block(x, attention, feed_forward, weight1, weight2, eps):
    def rms(t, weight):
        return t / torch.sqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps) * weight

    h = x + attention(rms(x, weight1))
    return h + feed_forward(rms(h, weight2))


def repeat_kv_heads(x, groups):
    return x.repeat_interleave(groups, dim=1)


def llama_layer_parameters(d_model, heads, kv_heads, d_ff):
    d_head = d_model // heads
    attention = d_model * d_model * 2 + 2 * d_model * kv_heads * d_head
    return attention + 3 * d_model * d_ff + 2 * d_model


def bpe_merge_step(pieces, freqs, new_id):
    counts = {}
    for ids, n in zip(pieces, freqs):
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + n
    pair = min(counts, key=lambda p: (-counts[p], p))
    return pair, [merge(ids, pair, new_id) for ids in pieces]


def bpe_encode(piece, merges):
    ids = list(piece.encode("utf-8"))
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, math.inf))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return ids


ANSWERS.update(
    {
        "check_swiglu": swiglu,
        "check_rms_norm_block": rms_norm_block,
        "check_repeat_kv": repeat_kv_heads,
        "check_llama_layer_parameters": llama_layer_parameters,
        "check_bpe_merge_step": bpe_merge_step,
        "check_bpe_encode": bpe_encode,
    }
)
TENSOR_RESULTS += ["check_swiglu", "check_rms_norm_block", "check_repeat_kv"]
COUNT_RESULTS += ["check_llama_layer_parameters"]
