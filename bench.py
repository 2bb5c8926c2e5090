"""
Benchmarks, nanoGPT bench.py style: the training step, and one attention layer (PERF_NOTES.md).
    python bench.py                          # GPU: 124M, standard / sd / linear, micro-batch 12
    python bench.py --attn sd --batch_size 12,32
    python bench.py --shape 355m             # does 355M S−D train at T=1024, micro-batch 16, in bf16?
    python bench.py --micro                  # one attention layer fwd+bwd vs T, generation cost per token
    python bench.py --all --profile          # everything, plus torch.profiler top ops per attention type
    python bench.py --tiny                   # seconds on a CPU (CI); the default when there is no GPU
Synthetic random tokens on the device, no data files. Prints tables and writes --out (bench.json).

Training step = forward + backward + grad clip + fused AdamW (model.configure_optimizers), as in train.py
with gradient_accumulation_steps=1, bf16 autocast on GPU, torch.compile by default on GPU. Times are
the median of per-step CUDA-event intervals after warm-up (no host sync between steps, like train.py);
MFU uses model.estimate_mfu against the matmul peak measured in the same run (bf16 on GPU, fp32 on CPU).
"""
import argparse
import datetime
import gc
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from model import GPT, Attention, GPTConfig, elu_linear_attention

ATTNS = ('standard', 'sd', 'linear')
# model shapes: the GPT-2 124M/355M shapes of config/std_125m.py, config/sd_355m.py, plus two small ones
SHAPES = {
    'tiny':  dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512, linear_chunk=16,
                  batch_size=[4], warmup=2, steps=5),
    'small': dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=50304, linear_chunk=64,
                  batch_size=[2], warmup=2, steps=5),
    '124m':  dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, linear_chunk=64,
                  batch_size=[12], warmup=10, steps=50),
    '355m':  dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50304, linear_chunk=64,
                  batch_size=[16], warmup=3, steps=10),
}
# attention micro-benchmark and generation settings: GPU defaults, and tiny ones for a CPU
MICRO = {
    'gpu':  dict(seq_lens=[1024, 2048, 4096, 8192, 16384], head_dims=[64, 128], width=768, tokens=16384,
                 chunk=64, chunks=[32, 64, 128, 256], gen_contexts=[1024, 4096, 16384, 65536], gen_batch=8,
                 warmup=5, iters=20),
    'tiny': dict(seq_lens=[64, 128], head_dims=[16, 32], width=64, tokens=256,
                 chunk=16, chunks=[8, 16, 32], gen_contexts=[64, 256, 1024], gen_batch=2,
                 warmup=1, iters=5),
}
# the project's GPU targets (PERF_NOTES.md)
TRAIN_TARGETS = {'standard': 575e3, 'sd': 600e3}   # tokens/s at 124M, T=1024, micro-batch 12 or 32
NOMINAL_BF16 = {'H100 PCIe': 756e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12}   # dense spec sheets


def ints(text):
    return [int(t) for t in text.split(',') if t]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--shape', choices=SHAPES, help="model shape (default: 124m on GPU, tiny on CPU)")
    p.add_argument('--tiny', action='store_true', help="tiny everything (same as --shape tiny): CPU smoke run")
    p.add_argument('--attn', help="comma list of standard,sd,linear (default: all three; sd for 355m)")
    p.add_argument('--norm', default='auto', choices=('auto', 'layernorm', 'none'),
                   help="auto: none for sd (the paper's setting), layernorm otherwise, as in config/")
    p.add_argument('--batch_size', type=ints, help="micro-batch, comma list (default per shape: 12; 16 for 355m)")
    for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size', 'linear_chunk', 'warmup', 'steps'):
        p.add_argument('--' + k, type=int, help="override the shape's value")
    p.add_argument('--grad_clip', type=float, default=1.0)
    p.add_argument('--device', help="default: cuda if available, else cpu")
    p.add_argument('--dtype', default='auto', choices=('auto', 'bfloat16', 'float32'),
                   help="autocast dtype; auto: bfloat16 on GPU, float32 (no autocast) on CPU")
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, help="torch.compile (default: on for cuda)")
    p.add_argument('--compile_mode', default='default',
                   help="default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs")
    p.add_argument('--micro', action='store_true', help="attention micro-benchmark and generation only")
    p.add_argument('--all', action='store_true', help="training benchmark and micro-benchmark")
    p.add_argument('--profile', action='store_true', help="also torch.profiler one training step per attention")
    p.add_argument('--seq_lens', type=ints, help="micro: sequence lengths")
    p.add_argument('--head_dims', type=ints, help="micro: head dims (heads = micro_width // head dim)")
    p.add_argument('--micro_width', type=int, help="micro: n_head * head_dim")
    p.add_argument('--micro_tokens', type=int, help="micro: batch * T per case (batch = tokens // T, at least 1)")
    p.add_argument('--micro_chunk', type=int, help="micro: ELU+1 chunk length of the main comparison")
    p.add_argument('--chunks', type=ints, help="micro: ELU+1 chunk lengths to sweep ('' to skip)")
    p.add_argument('--micro_compile', action='store_true', help="micro: torch.compile each case (slow to start)")
    p.add_argument('--gen_contexts', type=ints, help="micro: context lengths for the per-token generation cost")
    p.add_argument('--gen_batch', type=int, help="micro: sequences decoded together")
    p.add_argument('--peak_n', type=int, help="matmul size for the measured peak (default 8192 GPU, 1024 CPU)")
    p.add_argument('--threads', type=int, help="CPU threads (default: 1 for the tiny shape on CPU, else torch's)")
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--out', default='bench.json')
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- environment and timing

class Env:
    """Device, autocast dtype and the timing / memory helpers that differ between CUDA and CPU."""

    def __init__(self, device, dtype):
        self.device = device
        self.cuda = device.startswith('cuda')
        if dtype == 'auto':
            dtype = 'bfloat16' if self.cuda and torch.cuda.is_bf16_supported() else 'float32'
        self.dtype_name, self.dtype = dtype, getattr(torch, dtype)
        self.device_type = 'cuda' if self.cuda else 'cpu'
        # what the micro-benchmark tables compare: CUDA-event ms, or process-CPU ms on a (shared) CPU
        self.ms_key, self.ms_what = ('ms_median', 'CUDA-event ms') if self.cuda else ('cpu_ms_median', 'process-CPU ms')

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time_calls(self, fn, n):
        """fn() n times back to back: (per-call seconds, wall seconds for all n, per-call process CPU
        seconds or None). On CUDA each call is bracketed by events and the host syncs once at the end, as
        the training loop runs. On a CPU shared with other jobs, the process time of a 1-thread run is
        the steadier number (wall time counts the time slices other processes took)."""
        if self.cuda:
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            torch.cuda.synchronize()
            w0 = time.perf_counter()
            for start, end in ev:
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            wall = time.perf_counter() - w0
            return [s.elapsed_time(e) / 1e3 for s, e in ev], wall, None
        times, cpu = [], []
        w0 = time.perf_counter()
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return times, time.perf_counter() - w0, cpu

    def reset_memory(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self):
        """(bytes, what it is): the CUDA allocator's peak since reset_memory, or on CPU the process's
        peak resident set size so far (ru_maxrss, monotone over the whole run)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(), 'cuda_max_memory_allocated'
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'cpu_process_peak_rss'

    def info(self):
        d = dict(device=self.device, dtype=self.dtype_name, torch=torch.__version__, python=platform.python_version(),
                 cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            d.update(name=torch.cuda.get_device_name(self.device), cuda=torch.version.cuda,
                     total_memory=props.total_memory, capability=f"{props.major}.{props.minor}",
                     sm_count=props.multi_processor_count)
        else:
            d['name'] = cpu_name()
        return d


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'cpu'


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or 'out of memory' in str(e).lower()


def measure_peak(env, n, trials=5):
    """Best-of-`trials` FLOP/s of an n x n x n matmul in the compute dtype (bf16 on GPU, fp32 on CPU)."""
    a = torch.randn(n, n, device=env.device, dtype=env.dtype)
    b, c = torch.randn_like(a), torch.empty_like(a)
    flops = 2 * n ** 3
    torch.mm(a, b, out=c)
    env.sync()
    t0 = time.perf_counter()
    torch.mm(a, b, out=c)
    env.sync()
    reps = max(1, min(50, int(0.05 / max(time.perf_counter() - t0, 1e-6))))   # about 50 ms per trial
    best = best_cpu = math.inf
    for _ in range(trials):
        env.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        env.sync()
        best = min(best, (time.perf_counter() - t0) / reps)
        best_cpu = min(best_cpu, (time.process_time() - c0) / reps)
    del a, b, c
    env.reset_memory()
    d = dict(flops=flops / best, n=n, dtype=env.dtype_name, reps=reps, trials=trials)
    if not env.cuda:   # per process-CPU-second: with one thread, the steadier figure on a shared CPU
        d['flops_per_cpu_s'] = flops / best_cpu
    return d


def nominal_peak(env):
    if not env.cuda or env.dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(env.device)
    return next((v for k, v in NOMINAL_BF16.items() if all(w in name for w in k.split())), None)


def stats(times, cpu_times=None):
    s = sorted(times)
    d = dict(ms_median=1e3 * statistics.median(s), ms_min=1e3 * s[0], ms_max=1e3 * s[-1],
             ms_p90=1e3 * s[min(len(s) - 1, int(0.9 * len(s)))])
    if cpu_times:
        d['cpu_ms_median'] = 1e3 * statistics.median(cpu_times)
    return d


# ----------------------------------------------------------------------------- training step

def model_config(s, attn, norm):
    norm = ('none' if attn == 'sd' else 'layernorm') if norm == 'auto' else norm
    return GPTConfig(block_size=s['block_size'], vocab_size=s['vocab_size'], n_layer=s['n_layer'],
                     n_head=s['n_head'], n_embd=s['n_embd'], dropout=0.0, bias=False, norm=norm, attn=attn,
                     linear_chunk=s['linear_chunk'])


def build_train_step(env, s, attn, norm, batch_size, compile_, compile_mode, grad_clip, seed):
    """(model, step(), tokens per step): one train.py iteration on a fixed random batch."""
    torch.manual_seed(seed)
    model = GPT(model_config(s, attn, norm)).to(env.device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), env.device_type)
    fwd = torch.compile(model, mode=None if compile_mode == 'default' else compile_mode) if compile_ else model
    T = s['block_size']
    data = torch.randint(s['vocab_size'], (batch_size, T + 1), device=env.device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    params = [p for p in model.parameters()]

    def step():
        with env.autocast():
            loss = fwd(x, y)[1]
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return model, optimizer, step, batch_size * T


def bench_train(env, s, attn, norm, batch_size, args, peak):
    cfg = model_config(s, attn, norm)
    rec = dict(shape=s['name'], attn=attn, norm=cfg.norm, n_layer=cfg.n_layer, n_head=cfg.n_head,
               n_embd=cfg.n_embd, vocab_size=cfg.vocab_size, block_size=cfg.block_size, batch_size=batch_size,
               linear_chunk=cfg.linear_chunk, dtype=env.dtype_name, compiled=args.compile,
               compile_mode=args.compile_mode if args.compile else None, warmup=s['warmup'], steps=s['steps'])
    env.reset_memory()
    try:
        model, optimizer, step, tokens = build_train_step(env, s, attn, norm, batch_size, args.compile,
                                                           args.compile_mode, args.grad_clip, args.seed)
        t0 = time.perf_counter()
        step()
        env.sync()
        rec['first_step_s'] = time.perf_counter() - t0        # includes compilation
        for _ in range(s['warmup'] - 1):
            step()
        holder = []
        times, wall, cpu = env.time_calls(lambda: holder.append(step()), s['steps'])
        loss = holder[-1].item()
    except Exception as e:
        if not is_oom(e):
            raise
        torch._dynamo.reset()   # the memory goes with this frame; the next case's reset_memory returns it
        return rec | dict(ok=False, error=f"out of memory: {str(e).splitlines()[0][:200]}")
    dt = statistics.median(times)
    mem, mem_kind = env.peak_memory()
    rec.update(stats(times, cpu), ok=True, ms_mean=1e3 * wall / len(times), tokens_per_step=tokens,
               tokens_per_s=tokens / dt, params=model.num_params(), attention_params=model.num_attention_params(),
               flops_per_token=model.flops_per_token(cfg.block_size), fused_adamw=bool(optimizer.defaults.get('fused')),
               loss=loss, peak_mem_bytes=mem, peak_mem_kind=mem_kind)
    rec['tflops'] = rec['flops_per_token'] * rec['tokens_per_s'] / 1e12
    rec['mfu'] = model.estimate_mfu(tokens, dt, peak['flops'])
    if 'cpu_ms_median' in rec:
        rec['mfu_cpu_time'] = model.estimate_mfu(tokens, rec['cpu_ms_median'] / 1e3, peak['flops_per_cpu_s'])
    if peak.get('nominal_flops'):
        rec['mfu_nominal'] = model.estimate_mfu(tokens, dt, peak['nominal_flops'])
    if env.cuda:
        rec['peak_mem_fraction'] = mem / torch.cuda.get_device_properties(env.device).total_memory
    del model, optimizer, step, holder
    env.reset_memory()
    torch._dynamo.reset()
    return rec


def categorize(name):
    n = name.lower()
    if any(k in n for k in ('flash', 'efficient_attention', 'scaled_dot_product', 'fmha', 'cudnn_attention')):
        return 'attention kernel (SDPA)'
    if any(k in n for k in ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'gemm', 'sm90_xmma',
                            'cutlass', 'aten::_addmm_activation', 'ampere_', 'nvjet', 'tem_fused')):
        return 'matmul'
    if any(k in n for k in ('softmax', 'nll_loss', 'cross_entropy', 'logsumexp')):
        return 'softmax / cross-entropy'
    if any(k in n for k in ('adam', 'foreach', 'clip_grad', 'norm_')):
        return 'optimizer / grad clip'
    if any(k in n for k in ('layer_norm', 'gelu', 'elu', 'add', 'mul', 'div', 'sub', 'copy', 'cumsum', 'sum',
                            'tril', 'pad', 'fill', 'triton', 'embedding', 'cat', 'clone', 'zero')):
        return 'elementwise / reduction / copy'
    return 'other'


def profile_train(env, s, attn, norm, batch_size, args, top=15):
    """torch.profiler over `n` training steps after warm-up: the ops with the most self time."""
    from torch.profiler import ProfilerActivity, profile
    env.reset_memory()
    model, optimizer, step, tokens = build_train_step(env, s, attn, norm, batch_size, args.compile,
                                                       args.compile_mode, args.grad_clip, args.seed)
    for _ in range(max(2, s['warmup'])):
        step()
    env.sync()
    n = 3
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        env.sync()
    key = 'self_device_time_total' if env.cuda else 'self_cpu_time_total'

    def self_us(e):
        v = getattr(e, key, None)
        return v if v is not None else getattr(e, 'self_cuda_time_total', 0)

    # on CUDA count the kernels only: the CPU op that launched a kernel reports its time again
    events = [e for e in prof.key_averages() if self_us(e) > 0
              and (not env.cuda or e.device_type == torch.autograd.DeviceType.CUDA)]
    total = sum(self_us(e) for e in events)
    cats = {}
    for e in events:
        c = categorize(e.key)
        cats[c] = cats.get(c, 0) + self_us(e)
    rows = [dict(op=e.key, self_ms_per_step=self_us(e) / 1e3 / n, percent=100 * self_us(e) / total,
                 calls_per_step=e.count / n) for e in sorted(events, key=self_us, reverse=True)[:top]]
    del model, optimizer, step
    env.reset_memory()
    torch._dynamo.reset()
    return dict(attn=attn, shape=s['name'], batch_size=batch_size, time_kind=key, steps=n,
                total_ms_per_step=total / 1e3 / n, top_ops=rows,
                categories={c: 100 * v / total for c, v in sorted(cats.items(), key=lambda kv: -kv[1])})


# ----------------------------------------------------------------------------- attention micro-benchmark

def attention_layer(env, kind, T, d, width, chunk):
    H = max(1, width // d)
    cfg = GPTConfig(block_size=T, vocab_size=64, n_layer=1, n_head=H, n_embd=H * d, head_dim=d, bias=False,
                    attn=kind, linear_chunk=chunk, norm='none')
    return Attention(cfg, 0).to(env.device), H


def micro_case(env, level, kind, T, d, m, chunk, compile_):
    """Forward + backward of one attention layer ('layer': model.Attention with its projections) or of
    its token mixer alone ('mixer': SDPA / S−D fold + SDPA / elu_linear_attention on q, k, v)."""
    B = max(1, m['tokens'] // T)
    rec = dict(level=level, kind=kind, T=T, head_dim=d, batch=B, chunk=chunk if kind == 'linear' else None,
               compiled=compile_, dtype=env.dtype_name)
    env.reset_memory()
    torch.manual_seed(0)
    try:
        if level == 'layer':
            layer, H = attention_layer(env, kind, T, d, m['width'], chunk)
            x = torch.randn(B, T, H * d, device=env.device, requires_grad=True)
            leaves, fn = [x, *layer.parameters()], (lambda: layer(x))
        else:
            H = max(1, m['width'] // d)
            q, k, v = (torch.randn(B, T, H, d, device=env.device, dtype=env.dtype, requires_grad=True)
                       for _ in range(3))   # the model's layout: (B, T, H, d) viewed as (B, H, T, d)
            leaves = [q, k, v]
            if kind == 'standard':
                def fn():
                    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                          is_causal=True)
            elif kind == 'sd':   # q = u @ (S − D), k = u
                L = (0.1 * torch.randn(H, d, d, device=env.device)).requires_grad_()
                leaves.append(L)

                def fn():
                    u = k.transpose(1, 2)
                    return F.scaled_dot_product_attention(u @ L.to(u.dtype), u, v.transpose(1, 2), is_causal=True)
            else:
                def fn():
                    return elu_linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), chunk)[0]
        rec['n_head'] = H
        if compile_:
            torch._dynamo.reset()
            fn = torch.compile(fn)
        with env.autocast():
            grad = torch.randn_like(fn())

        def step():
            for t in leaves:
                t.grad = None
            with env.autocast():
                y = fn()
            y.backward(grad)

        for _ in range(m['warmup']):
            step()
        times, _, cpu = env.time_calls(step, m['iters'])
    except Exception as e:
        if not is_oom(e):
            raise
        return rec | dict(ok=False, error='out of memory')
    rec.update(stats(times, cpu), ok=True)
    dt = rec[env.ms_key] / 1e3
    rec['tokens_per_s'] = B * T / dt
    if env.cuda:
        rec['peak_mem_bytes'] = env.peak_memory()[0]
    if level == 'mixer':   # FLOPs as model.py counts them (full T x T or C x C products, fwd + bwd)
        fpt = 3 * H * (4 * min(chunk, T) * d + 4 * d * d) if kind == 'linear' else 3 * H * 4 * T * d
        rec.update(flops_per_token=fpt, tflops=fpt * B * T / dt / 1e12)
    return rec


def gen_case(env, kind, L, d, m):
    """Seconds to decode one token through one attention layer with L tokens of context:
    'softmax_cat' model.py's KV cache (torch.cat per token), 'softmax_prealloc' a preallocated KV cache,
    'linear_state' the ELU+1 recurrent state (B, H, d, d) + (B, H, d), independent of L."""
    B = m['gen_batch']
    rec = dict(kind=kind, context=L, batch=B, head_dim=d)
    env.reset_memory()
    torch.manual_seed(0)
    try:
        layer, H = attention_layer(env, 'linear' if kind == 'linear_state' else 'standard', L + 1, d, m['width'], 64)
        layer.eval()
        x = torch.randn(B, 1, H * d, device=env.device)
        if kind == 'linear_state':
            state = (torch.rand(B, H, d, d, device=env.device) * L, torch.rand(B, H, d, device=env.device) * L + 1)

            def fn():
                return layer(x, {'state': state})
        elif kind == 'softmax_cat':
            K, V = (torch.randn(B, H, L, d, device=env.device, dtype=env.dtype) for _ in range(2))

            def fn():
                return layer(x, {'k': K, 'v': V})
        else:
            K, V = (torch.randn(B, H, L + 1, d, device=env.device, dtype=env.dtype) for _ in range(2))

            def fn():
                q, k, v = layer.qkv(x)
                K[:, :, L:], V[:, :, L:] = k, v
                y = F.scaled_dot_product_attention(q, K, V)
                return layer.c_proj(y.transpose(1, 2).reshape(B, 1, H * d))

        with torch.no_grad(), env.autocast():
            for _ in range(m['warmup'] + 2):
                fn()
            times, _, cpu = env.time_calls(fn, max(10, 5 * m['iters']))
    except Exception as e:
        if not is_oom(e):
            raise
        return rec | dict(ok=False, error='out of memory')
    return rec | stats(times, cpu) | dict(ok=True, n_head=H)


# ----------------------------------------------------------------------------- targets and output

def targets(env, res, s):
    """The project's GPU targets: met (True / False) or None with the reason it was not measured."""
    out = []

    def add(name, threshold, value, met, why=None):
        out.append(dict(target=name, threshold=threshold, measured=value, met=met, note=why))

    gpu = env.cuda and env.dtype == torch.bfloat16
    why_not = None if gpu else "not measured: needs a GPU in bf16"
    for attn, need in TRAIN_TARGETS.items():
        name = f"{attn} 124M T=1024 tokens/s (micro-batch 12 or 32)"
        runs = [r for r in res.get('train', []) if r.get('ok') and r['attn'] == attn and r['shape'] == '124m'
                and r['block_size'] == 1024 and r['batch_size'] in (12, 32)]
        if not gpu or not runs:
            add(name, f">= {need / 1e3:.0f}K", None, None, why_not or "not measured in this run")
        else:
            best = max(runs, key=lambda r: r['tokens_per_s'])
            add(name, f">= {need / 1e3:.0f}K", f"{best['tokens_per_s'] / 1e3:.0f}K (B={best['batch_size']})",
                best['tokens_per_s'] >= need)
    mixer = {(r['kind'], r['head_dim'], r['T']): r for r in res.get('micro', []) if r['level'] == 'mixer' and r['ok']}
    mode = 'compiled' if any(r['compiled'] for r in mixer.values()) else 'eager'
    for d in sorted({key[1] for key in mixer}):
        def ratio(T):   # softmax time / ELU+1 time
            a, b = mixer.get(('standard', d, T)), mixer.get(('linear', d, T))
            return a['ms_median'] / b['ms_median'] if a and b else None
        Ts = sorted(T for (kind, dd, T) in mixer if dd == d and kind == 'linear' and T >= 4096)
        checks = [
            (f"ELU+1 faster than flash from 4K on (d={d}, {mode})", "softmax/ELU+1 > 1 at every T >= 4096",
             [ratio(T) for T in Ts], lambda rs: all(r > 1 for r in rs)),
            (f"ELU+1 >= 3x faster at 16K (d={d}, {mode})", "softmax/ELU+1 >= 3", [ratio(16384)], lambda rs: rs[0] >= 3),
            (f"ELU+1 <= 2x slower at 1K (d={d}, {mode})", "ELU+1/softmax <= 2", [ratio(1024)], lambda rs: 1 / rs[0] <= 2),
        ]
        for name, thr, rs, ok in checks:
            if not gpu or not rs or None in rs:
                add(name, thr, None, None, why_not or "sequence length not in this run")
            else:
                add(name, thr, ', '.join(f"{r:.2f}x" for r in rs), ok(rs))
    if not mixer:
        add("ELU+1 chunked vs flash softmax (1K / 4K+ / 16K)", "see PERF_NOTES.md", None, None,
            why_not or "run with --micro")
    name = "355M S−D fits at T=1024, micro-batch >= 16, bf16"
    runs = [r for r in res.get('train', []) if r['shape'] == '355m' and r['attn'] == 'sd'
            and r['block_size'] == 1024 and r['batch_size'] >= 16]
    if not gpu or not runs:
        add(name, "no OOM", None, None, why_not or "run with --shape 355m")
    else:
        fit = [r for r in runs if r.get('ok')]
        best = max(fit, key=lambda r: r['batch_size']) if fit else None
        add(name, "no OOM", f"B={best['batch_size']}: peak {best['peak_mem_bytes'] / 2**30:.1f} GiB "
            f"({100 * best['peak_mem_fraction']:.0f}%)" if best else "OOM", bool(best))
    return out


def table(title, headers, rows):
    rows = [[('' if v is None else v) if isinstance(v, str) or v is None else fmt(v) for v in r] for r in rows]
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print('  '.join(str(h).rjust(w[i]) for i, h in enumerate(headers)))
    for r in rows:
        print('  '.join(str(v).rjust(w[i]) for i, v in enumerate(r)))


def fmt(v):
    if isinstance(v, bool):
        return 'yes' if v else 'no'
    if isinstance(v, int):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def gib(b):
    return None if b is None else b / 2 ** 30


def finite(obj):
    """NaN / inf become None in the JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def git_state():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return dict(commit=head.stdout.strip() or None, dirty=bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        return dict(commit=None, dirty=None)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    env = Env(device, args.dtype)
    if env.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    shape = 'tiny' if args.tiny else args.shape or ('124m' if env.cuda else 'tiny')
    s = dict(SHAPES[shape], name=shape)
    for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size', 'linear_chunk', 'warmup', 'steps'):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    if args.batch_size:
        s['batch_size'] = args.batch_size
    if args.compile is None:
        args.compile = env.cuda
    if args.threads or (shape == 'tiny' and not env.cuda):   # tiny ops only lose from threads on a shared CPU
        torch.set_num_threads(args.threads or 1)
    attns = args.attn.split(',') if args.attn else (['sd'] if shape == '355m' else list(ATTNS))
    if bad := [a for a in attns if a not in ATTNS]:
        raise SystemExit(f"error: --attn {','.join(bad)}: use standard, sd, linear")
    m = dict(MICRO['gpu' if env.cuda and shape != 'tiny' else 'tiny'])
    for k, a in (('seq_lens', 'seq_lens'), ('head_dims', 'head_dims'), ('width', 'micro_width'),
                 ('tokens', 'micro_tokens'), ('chunk', 'micro_chunk'), ('chunks', 'chunks'),
                 ('gen_contexts', 'gen_contexts'), ('gen_batch', 'gen_batch')):
        if getattr(args, a) is not None:
            m[k] = getattr(args, a)
    run_train = not args.micro or args.all
    run_micro = args.micro or args.all or shape == 'tiny'   # tiny: exercise everything

    res = dict(meta=dict(command=shlex.join(['python', os.path.basename(sys.argv[0]), *(sys.argv[1:] if argv is None else argv)]),
                         date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                         host=platform.node(), git=git_state(), env=env.info(), shape=s, micro_settings=m,
                         sections=[n for n, on in (('train', run_train), ('micro', run_micro),
                                                   ('profile', args.profile)) if on]))
    e = res['meta']['env']
    print(f"{e['name']} | torch {e['torch']} | {env.dtype_name} | compile={args.compile} | shape {shape}: "
          f"{s['n_layer']}x{s['n_embd']}, {s['n_head']} heads, T={s['block_size']}, vocab {s['vocab_size']}")
    peak = measure_peak(env, args.peak_n or (8192 if env.cuda else 1024))
    peak['nominal_flops'] = nominal_peak(env)
    res['peak'] = peak
    print(f"measured {peak['dtype']} matmul peak: {peak['flops'] / 1e12:.3g} TFLOP/s ({peak['n']}^3, best of "
          f"{peak['trials']})" + (f"; spec sheet {peak['nominal_flops'] / 1e12:.0f}" if peak['nominal_flops'] else '')
          + (f"; {peak['flops_per_cpu_s'] / 1e12:.3g} per process-CPU-second" if 'flops_per_cpu_s' in peak else ''))

    if run_train:
        res['train'] = [bench_train(env, s, a, args.norm, b, args, peak) for a in attns for b in s['batch_size']]
        table(f"training step (forward + backward + clip + AdamW), median of {s['steps']} after {s['warmup']} warm-up",
              ['attn', 'norm', 'params', 'B x T', 'ms/step', 'mean', 'cpu ms', 'tok/s', 'TFLOP/s', 'MFU',
               'peak GiB', '1st step s', 'loss'],
              [[r['attn'], r['norm'], f"{r['params'] / 1e6:.1f}M", f"{r['batch_size']}x{r['block_size']}",
                r['ms_median'], r['ms_mean'], r.get('cpu_ms_median'), r['tokens_per_s'], r['tflops'],
                f"{100 * r['mfu']:.1f}%", gib(r['peak_mem_bytes']), r['first_step_s'], r['loss']] if r['ok'] else
               [r['attn'], r['norm'], '', f"{r['batch_size']}x{r['block_size']}", r['error'][:40]] + [''] * 8
               for r in res['train']])
        if not env.cuda:
            print("(CPU: 'cpu ms' is process CPU time per step; 'peak GiB' the process's peak RSS so far)")

    if args.profile:
        res['profile'] = [profile_train(env, s, a, args.norm, s['batch_size'][0], args) for a in attns]
        for p in res['profile']:
            table(f"profile {p['attn']} ({p['shape']}, B={p['batch_size']}): {p['total_ms_per_step']:.1f} ms "
                  f"{p['time_kind']} per step; by category: " +
                  ', '.join(f"{c} {v:.0f}%" for c, v in p['categories'].items()),
                  ['op', 'self ms/step', '%', 'calls/step'],
                  [[r['op'][:60], r['self_ms_per_step'], r['percent'], r['calls_per_step']] for r in p['top_ops']])

    if run_micro:
        compile_ = args.micro_compile
        res['micro'] = [micro_case(env, level, kind, T, d, m, m['chunk'], compile_)
                        for level in ('mixer', 'layer') for d in m['head_dims'] for T in m['seq_lens'] for kind in ATTNS]
        for level in ('mixer', 'layer'):
            by = {(r['kind'], r['head_dim'], r['T']): r for r in res['micro'] if r['level'] == level}
            rows = []
            for d in m['head_dims']:
                for T in m['seq_lens']:
                    ms = [by[(k, d, T)].get(env.ms_key) for k in ATTNS]
                    rows.append([d, T, by[('standard', d, T)]['batch'], *ms,
                                 ms[0] / ms[2] if ms[0] and ms[2] else None])
            table(f"attention {level}: forward + backward, {env.ms_what} (median of {m['iters']}), batch x T = {m['tokens']}, "
                  f"width {m['width']}, ELU+1 chunk {m['chunk']}" + (", compiled" if compile_ else ""),
                  ['d', 'T', 'B', 'softmax', 'S−D', 'ELU+1', 'softmax/ELU+1'], rows)
        if m['chunks']:
            res['chunk_sweep'] = [micro_case(env, 'mixer', 'linear', T, d, m, C, compile_)
                                  for d in m['head_dims'] for T in m['seq_lens'] for C in m['chunks']]
            table(f"ELU+1 chunk sweep (mixer fwd+bwd): {env.ms_what}, model FLOPs per token per head, achieved TFLOP/s",
                  ['d', 'T', 'chunk', 'ms', 'FLOP/tok/head', 'TFLOP/s'],
                  [[r['head_dim'], r['T'], r['chunk'], r.get(env.ms_key),
                    r['flops_per_token'] // r['n_head'] if r['ok'] else None, r.get('tflops')]
                   for r in res['chunk_sweep']])
        d = m['head_dims'][0]
        kinds = ('softmax_cat', 'softmax_prealloc', 'linear_state')
        res['generation'] = [gen_case(env, k, L, d, m) for L in m['gen_contexts'] for k in kinds]
        by = {(r['kind'], r['context']): r for r in res['generation']}
        table(f"generation: {env.ms_what} per token through one attention layer (batch {m['gen_batch']}, d={d}, "
              f"width {m['width']})", ['context', 'softmax (model.py cat)', 'softmax (prealloc)', 'ELU+1 state'],
              [[L, *(by[(k, L)].get(env.ms_key) for k in kinds)] for L in m['gen_contexts']])

    res['targets'] = targets(env, res, s)
    table("targets (GPU, PERF_NOTES.md)", ['target', 'threshold', 'measured', 'status'],
          [[t['target'], t['threshold'], t['measured'] or '',
            t['note'] if t['met'] is None else ('met' if t['met'] else 'NOT met')] for t in res['targets']])
    with open(args.out, 'w') as f:
        json.dump(finite(res), f, indent=1)
    print(f"\nwrote {args.out}")
    return res


if __name__ == '__main__':
    main()
