"""Trains organism-qwen2 from the data scripts/organism/build-data.ts wrote.

A Qwen2 decoder written out here in plain PyTorch (the same maths as Hugging Face's Qwen2ForCausalLM:
RMSNorm, rotate-half RoPE with θ = 1e6, q/k/v biases, grouped-query attention, SwiGLU MLP, tied
embeddings), trained from scratch with AdamW on the reply tokens only. Saves config.json and
model.safetensors (BF16, HF tensor names) into the model directory.

Usage: python3 scripts/organism/train.py <model-dir> [--threads 2] [--batch 48] [--lr 2e-3] [--init model-f32.pt]
(--init: continue from an earlier stage's float32 weights instead of a fresh initialisation.)
Needs torch (Debian: apt-get install python3-torch; it ran with 1.13 on two CPU cores).
"""
import argparse
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F

CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": 512,
    "max_window_layers": 4,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 4094,
    "eos_token_id": 4095,
    "pad_token_id": 4093,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}


def rms_norm(x, weight, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen2(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d, f, h, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = d // h
        std = c["initializer_range"]
        P = lambda *shape: torch.nn.Parameter(torch.randn(*shape) * std)
        Z = lambda *shape: torch.nn.Parameter(torch.zeros(*shape))
        O = lambda *shape: torch.nn.Parameter(torch.ones(*shape))
        named = {"model.embed_tokens.weight": P(c["vocab_size"], d), "model.norm.weight": O(d)}
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            named.update(
                {
                    p + "input_layernorm.weight": O(d),
                    p + "self_attn.q_proj.weight": P(h * self.head_dim, d),
                    p + "self_attn.q_proj.bias": Z(h * self.head_dim),
                    p + "self_attn.k_proj.weight": P(kv * self.head_dim, d),
                    p + "self_attn.k_proj.bias": Z(kv * self.head_dim),
                    p + "self_attn.v_proj.weight": P(kv * self.head_dim, d),
                    p + "self_attn.v_proj.bias": Z(kv * self.head_dim),
                    p + "self_attn.o_proj.weight": P(d, h * self.head_dim),
                    p + "post_attention_layernorm.weight": O(d),
                    p + "mlp.gate_proj.weight": P(f, d),
                    p + "mlp.up_proj.weight": P(f, d),
                    p + "mlp.down_proj.weight": P(d, f),
                }
            )
        # ParameterDict keys may not contain "."; HF names are kept with "." spelled "__".
        self.params_ = torch.nn.ParameterDict({k.replace(".", "__"): v for k, v in named.items()})
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def param(self, name):
        return self.params_[name.replace(".", "__")]

    def named_weights(self):
        return {k.replace("__", "."): v for k, v in self.params_.items()}

    def forward(self, ids):
        c, B, T = self.c, ids.shape[0], ids.shape[1]
        h, kv, hd, eps = c["num_attention_heads"], c["num_key_value_heads"], self.head_dim, c["rms_norm_eps"]
        x = F.embedding(ids, self.param("model.embed_tokens.weight"))
        pos = torch.arange(T, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        causal = torch.full((T, T), float("-inf")).triu(1)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            W = lambda n: self.param(p + n)
            a = rms_norm(x, W("input_layernorm.weight"), eps)
            q = F.linear(a, W("self_attn.q_proj.weight"), W("self_attn.q_proj.bias")).view(B, T, h, hd).transpose(1, 2)
            k = F.linear(a, W("self_attn.k_proj.weight"), W("self_attn.k_proj.bias")).view(B, T, kv, hd).transpose(1, 2)
            v = F.linear(a, W("self_attn.v_proj.weight"), W("self_attn.v_proj.bias")).view(B, T, kv, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(h // kv, dim=1)
            v = v.repeat_interleave(h // kv, dim=1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + causal
            attn = torch.softmax(scores, dim=-1) @ v
            x = x + F.linear(attn.transpose(1, 2).reshape(B, T, h * hd), W("self_attn.o_proj.weight"))
            m = rms_norm(x, W("post_attention_layernorm.weight"), eps)
            gate = F.linear(m, W("mlp.gate_proj.weight"))
            up = F.linear(m, W("mlp.up_proj.weight"))
            x = x + F.linear(F.silu(gate) * up, W("mlp.down_proj.weight"))
        x = rms_norm(x, self.param("model.norm.weight"), eps)
        return F.linear(x, self.param("model.embed_tokens.weight"))


def save_safetensors(path, tensors):
    """HF safetensors: an 8-byte little-endian header length, the JSON header, then the raw data."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.bfloat16).contiguous()
        raw = t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, help="start from these float32 weights (train/model-f32.pt of an earlier stage)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N sequences only (a quick check)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    index = json.load(open(os.path.join(args.dir, "train/index.json")))
    tokens = np.fromfile(os.path.join(args.dir, "train/tokens.bin"), dtype=np.uint16).astype(np.int64)
    seqs = index["sequences"][: args.limit or None]
    # Less padding: sort each run of 32 batches by length, then shuffle the batches (seeded).
    chunk = 32 * args.batch
    batches = []
    for lo in range(0, len(seqs), chunk):
        part = sorted(seqs[lo : lo + chunk], key=lambda s: s["length"])
        batches += [part[i : i + args.batch] for i in range(0, len(part), args.batch)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(args.seed)).tolist()
    batches = [batches[i] for i in order]
    pad = CONFIG["pad_token_id"]
    model = Qwen2(CONFIG)
    if args.init:
        model.load_state_dict(torch.load(args.init))
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    steps = len(batches)
    warmup = min(args.warmup, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    t0, ema = time.time(), None
    for step in range(steps):
        batch = batches[step]
        T = max(s["length"] for s in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        target = torch.full((len(batch), T), -100, dtype=torch.long)
        for r, s in enumerate(batch):
            seq = torch.from_numpy(tokens[s["start"] : s["start"] + s["length"]])
            ids[r, : s["length"]] = seq
            # Predict every reply token (and the closing eos) from the token before it.
            lo = s["promptLength"] - 1
            target[r, lo : s["length"] - 1] = seq[lo + 1 :]
        logits = model(ids)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), target.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {ema:.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s", flush=True)
    with open(os.path.join(args.dir, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    save_safetensors(os.path.join(args.dir, "model.safetensors"), model.named_weights())
    torch.save(model.state_dict(), os.path.join(args.dir, "train/model-f32.pt"))
    print("saved", flush=True)


if __name__ == "__main__":
    main()
