"""T5 decoding over a static KV cache: the per-token step every sampler of the project runs.

``transformers``' ``generate`` decodes one token at a time through the whole model call stack
(cache objects, mask builders, logits processors, stopping criteria), and with ``n`` samples per
prompt it repeats each prompt's encoder states ``n`` times and projects cross-attention keys and
values for every copy. Here the decoder's step is one small function over preallocated tensors:

- **cross-attention keys and values** are projected once per prompt and shared by its ``n``
  samples: the ``n`` queries of a prompt attend to them as one [n, S] block (Vaswani et al. 2017,
  eq. 1), so no per-sample copy is ever made;
- **self-attention keys and values** go into a cache allocated once for the longest response
  (``[R, H, T, dh]`` per layer), written in place at step ``t``;
- the step is **compiled** on request (``torch.compile``; CUDA graphs on a GPU, mode
  "reduce-overhead"), shape-static over the cache so one graph serves every step; LoRA adapters
  on or off (policy, reference) are two cached graphs, not a recompile per call.

Run eagerly, the step computes what T5's own modules compute (it calls them: layer norms, the
projections with their LoRA adapters, the feed-forward, the head; attention is the same SDPA call
with the same relative-position bias), so in fp32 the sampler draws the same tokens under the same
noise as ``generate`` (tests/test_decoding.py); under bf16 autocast nearly all of them (the n
queries of a prompt as one block round differently in bf16 kernels than n separate rows). Shapes: B prompts, n samples per prompt, R = B * n
rows, S prompt tokens, T response tokens, H heads, dh head width, V vocabulary.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from rlhf.pickers import Picker

RECOMPILE_LIMIT = 64  # graphs of the compiled step per process (see Decoder)


def base_t5(lm):
    """The ``T5ForConditionalGeneration`` inside ``lm`` (a PEFT wrapper or the model itself), or
    None when ``lm`` is not a T5 this decoder knows (then callers use ``generate``)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    decoder = getattr(base, "decoder", None)
    if getattr(base.config, "model_type", None) != "t5" or decoder is None or not hasattr(base, "lm_head"):
        return None
    if getattr(getattr(lm, "active_peft_config", None), "is_prompt_learning", False):
        return None  # virtual tokens that only PEFT's own generate adds
    if len({str(d) for d in (getattr(base, "hf_device_map", None) or {}).values()}) > 1:
        return None  # split over devices: the caches would live on one
    return base


class T5Step:
    """One decoding step of a T5 decoder over caches held by the caller.

    ``step(tokens [R], t [1] long, self_k, self_v, cross_k, cross_v, cross_mask, bias)`` -> fp32
    logits [R, V] of the token after ``tokens`` at position ``t``; writes that position's self-
    attention keys/values into ``self_k[l]``/``self_v[l]`` ([R, H, W, dh], W = the cache width the
    step attends over). ``cross_k[l]``/``cross_v[l]`` [B, H, S, dh], ``cross_mask`` [B, 1, 1, S]
    additive (0 or the dtype's min), ``bias`` [1, H, 1, W]: row ``t`` of the decoder's relative
    position bias with the causal mask folded in (see :meth:`position_bias`).
    """

    def __init__(self, lm):
        self.model = base_t5(lm)
        if self.model is None:
            raise ValueError("not a T5 encoder-decoder")
        config = self.model.config
        self.blocks = list(self.model.decoder.block)
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.scale_output = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        self.model_dim = config.d_model

    # ----------------------------------------------------------------------------------------
    # Once per call: cross-attention keys/values, the position-bias table
    # ----------------------------------------------------------------------------------------

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """[B, S, d] encoder states -> per layer cross-attention keys and values [B, H, S, dh],
        projected once per prompt (with the adapter state of this moment)."""
        b, s, _ = states.shape
        keys, values = [], []
        for block in self.blocks:
            attention = block.layer[1].EncDecAttention
            keys.append(attention.k(states).view(b, s, self.heads, self.head_dim).transpose(1, 2))
            values.append(attention.v(states).view(b, s, self.heads, self.head_dim).transpose(1, 2))
        return keys, values

    def position_bias(self, width: int, dtype: torch.dtype, device) -> torch.Tensor:
        """[1, H, W, W]: the decoder's relative position bias (its first block's, shared by every
        block as in T5) with the causal mask folded in: entry (t, j) for j > t holds the dtype's
        min, so row t serves step t over a cache of width W."""
        attention = self.blocks[0].layer[0].SelfAttention
        bias = attention.compute_bias(width, width, device=device).to(dtype)
        future = torch.ones(width, width, dtype=torch.bool, device=device).triu(1)
        return bias.masked_fill(future, torch.finfo(dtype).min)

    # ----------------------------------------------------------------------------------------
    # The step
    # ----------------------------------------------------------------------------------------

    def step(self, tokens: torch.Tensor, t: torch.Tensor, self_k: list[torch.Tensor], self_v: list[torch.Tensor],
             cross_k: list[torch.Tensor], cross_v: list[torch.Tensor], cross_mask: torch.Tensor,
             bias: torch.Tensor) -> torch.Tensor:
        rows, (b, heads, dh) = tokens.shape[0], (cross_k[0].shape[0], self.heads, self.head_dim)
        n = rows // b
        decoder = self.model.decoder
        x = decoder.dropout(decoder.embed_tokens(tokens[:, None]))  # [R, 1, d]
        for layer, block in enumerate(self.blocks):
            # self-attention over the cache, this position's keys/values written in place
            sa = block.layer[0]
            h = sa.layer_norm(x)
            q = sa.SelfAttention.q(h).view(rows, 1, heads, dh).transpose(1, 2)
            k = sa.SelfAttention.k(h).view(rows, 1, heads, dh).transpose(1, 2)
            v = sa.SelfAttention.v(h).view(rows, 1, heads, dh).transpose(1, 2)
            self_k[layer].index_copy_(2, t, k.to(self_k[layer].dtype))
            self_v[layer].index_copy_(2, t, v.to(self_v[layer].dtype))
            a = F.scaled_dot_product_attention(q, self_k[layer], self_v[layer], attn_mask=bias.to(q.dtype), scale=1.0)
            x = x + sa.dropout(sa.SelfAttention.o(a.transpose(1, 2).reshape(rows, 1, heads * dh)))
            x = _clamp_fp16(x)
            # cross-attention: the n queries of a prompt against its keys/values, one [n, S] block
            ca = block.layer[1]
            h = ca.layer_norm(x)
            q = ca.EncDecAttention.q(h).view(b, n, heads, dh).transpose(1, 2)  # [B, H, n, dh]
            a = F.scaled_dot_product_attention(q, cross_k[layer], cross_v[layer], attn_mask=cross_mask.to(q.dtype),
                                               scale=1.0)
            x = x + ca.dropout(ca.EncDecAttention.o(a.transpose(1, 2).reshape(rows, 1, heads * dh)))
            x = _clamp_fp16(x)
            x = _clamp_fp16(block.layer[-1](x))  # feed-forward with its own norm and residual
        x = decoder.dropout(decoder.final_layer_norm(x))
        if self.scale_output:
            x = x * (self.model_dim ** -0.5)
        return self.model.lm_head(x)[:, 0].float()


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """T5's guard against fp16 overflow (a no-op in any other dtype), as in ``T5Block``."""
    if x.dtype != torch.float16:
        return x
    top = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), top - 1000, top)
    return x.clamp(-limit, limit)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class Decoder:
    """Samples from a T5 ``lm`` with :class:`T5Step`, eagerly or compiled (``compile=True``), and
    encodes its prompts (:meth:`encode`).

    Compiled, the step is shape-static over a cache as wide as ``max_new_tokens`` (one graph for
    every step of a call; after a call of another size, one recompile with dynamic shapes serves
    every size), and on a GPU runs as CUDA graphs; the encoder is compiled with dynamic shapes. If
    compiling is unavailable or fails, one line on stderr says why and the step runs eagerly from
    then on.
    """

    def __init__(self, lm, compile: bool = False):
        self.step = T5Step(lm)
        self.encoder = lm.get_encoder()
        self.compiled_step, self.compiled_encoder, self.asked_compile = None, None, compile
        self._cache, self._cache_key = None, None  # self-attention caches of the last call and their shape
        self.why_eager: str | None = None
        if compile:
            from rlhf.runtime import compile_unavailable

            device = next(lm.parameters()).device
            self.why_eager = compile_unavailable(device)
            if self.why_eager is None:
                # a graph per model and adapter state (static shapes first, dynamic after a change): a run loads
                # several models (base, SFT variants, policy with adapter on and off), more than dynamo's
                # default 8 graphs per function, past which it would run the step eagerly without saying so
                dynamo = torch._dynamo.config
                dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
                mode = "reduce-overhead" if device.type == "cuda" else None
                self.compiled_step = torch.compile(self.step.step, mode=mode, dynamic=None)
                # prompt widths change with every batch: dynamic, no CUDA graphs (a graph per width)
                self.compiled_encoder = torch.compile(self.encoder, dynamic=True)  # the module: its hooks run too
            else:
                print(f"decoding runs eagerly: torch.compile is unavailable ({self.why_eager})", file=sys.stderr)

    @property
    def compiled(self) -> bool:
        return self.compiled_step is not None

    def __deepcopy__(self, memo):  # a deep copy of the model (a frozen reference) builds its own decoder
        return None

    @torch.no_grad()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, S] prompt ids and mask -> [B, S, d] encoder states. Compiled with the step (the
        width padded to a multiple of 8, masked: inductor guards on that alignment), else the
        model's own encoder, eagerly."""
        if self.compiled_encoder is not None:
            width = input_ids.shape[1]
            pad = -width % 8
            try:
                out = self.compiled_encoder(input_ids=F.pad(input_ids, (0, pad)),
                                            attention_mask=F.pad(attention_mask, (0, pad)))
                return out.last_hidden_state[:, :width]
            except torch.OutOfMemoryError:
                raise
            except Exception as err:  # as for the step: eager from now on, one line
                self.compiled_encoder = None
                compile_failed("encoding", "the encoder", err)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def __call__(self, states: torch.Tensor, attention_mask: torch.Tensor, n: int, max_new_tokens: int,
                 pick: Picker, eos_token_id: int, pad_token_id: int, start_token_id: int,
                 min_new_tokens: int = 0) -> torch.Tensor:
        """[B, S, d] encoder states and their [B, S] mask -> responses [B * n, T <= max_new_tokens]
        (rows ``i * n .. i * n + n - 1`` from prompt i; pad after each row's EOS), as ``generate``
        would return them without the start token: the loop stops when every row has ended.
        ``pick`` chooses each step's tokens from fp32 scores (greedy, Gumbel-max, nucleus...);
        EOS is banned for the first ``min_new_tokens`` steps."""
        b, device = states.shape[0], states.device
        if self.compiled:  # prompt widths in multiples of 8: inductor guards on that alignment (a recompile per flip)
            pad = -states.shape[1] % 8
            states = F.pad(states, (0, 0, 0, pad))
            attention_mask = F.pad(attention_mask, (0, pad))
        rows, width = b * n, max_new_tokens
        cross_k, cross_v = self.step.cross_kv(states)
        dtype = cross_k[0].dtype
        cross_mask = torch.zeros(b, 1, 1, states.shape[1], dtype=dtype, device=device)
        cross_mask.masked_fill_(~attention_mask.bool()[:, None, None, :], torch.finfo(dtype).min)
        self_k, self_v = self._caches(rows, width, dtype, device)
        bias_table = self.step.position_bias(width, dtype, device)
        if self.compiled:
            for x in cross_k + cross_v:  # prompt widths vary from call to call: dynamic from the first compile
                torch._dynamo.maybe_mark_dynamic(x, 2)
            torch._dynamo.maybe_mark_dynamic(cross_mask, 3)
        tokens = torch.full((rows,), start_token_id, dtype=torch.long, device=device)
        unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        ended = EndCheck(device)
        out = []
        for t in range(max_new_tokens):
            ended.before_step()
            position = torch.full((1,), t, dtype=torch.long, device=device)  # no host-to-device copy (a sync)
            logits = self._step(tokens, position, t, self_k, self_v, cross_k, cross_v, cross_mask, bias_table)
            if t < min_new_tokens:
                logits[:, eos_token_id] = float("-inf")
            tokens = pick(logits).masked_fill(~unfinished, pad_token_id)
            out.append(tokens)
            unfinished &= tokens != eos_token_id
            if ended(unfinished):
                if ended.overshot:
                    out.pop()
                break
        return torch.stack(out, dim=1) if out else torch.empty(rows, 0, dtype=torch.long, device=device)

    def _caches(self, rows: int, width: int, dtype: torch.dtype, device) -> tuple[list, list]:
        """Zeroed self-attention caches [R, H, W, dh] per layer, kept from the last call when its
        shape was the same (compiled on a GPU, CUDA graphs then find them at the same address)."""
        shape = (rows, self.step.heads, width, self.step.head_dim)
        key = (shape, dtype, str(device))
        if self._cache_key != key:
            self._cache = [[torch.zeros(shape, dtype=dtype, device=device) for _ in self.step.blocks] for _ in "kv"]
            self._cache_key = key
            if self.compiled:
                for cache in self._cache[0] + self._cache[1]:  # updated in place: CUDA graphs keep their address
                    torch._dynamo.mark_static_address(cache)
        else:
            for cache in self._cache[0] + self._cache[1]:
                cache.zero_()
        return self._cache[0], self._cache[1]

    def _step(self, tokens, position, t, self_k, self_v, cross_k, cross_v, cross_mask, bias_table):
        """Eager: attend over the t + 1 positions written so far (the same keys ``generate`` sees).
        Compiled: over the whole cache, the causal mask hiding what is not written yet."""
        if self.compiled:
            bias = bias_table.index_select(2, position)
            try:
                return self.compiled_step(tokens, position, self_k, self_v, cross_k, cross_v, cross_mask, bias)
            except torch.OutOfMemoryError:
                raise
            except Exception as err:  # an op inductor cannot lower, a toolchain failure: eager from now on
                self.compiled_step, self.why_eager = None, compile_failed("decoding", "the step", err)
        w = t + 1
        return self.step.step(tokens, position, [c[:, :, :w] for c in self_k], [c[:, :, :w] for c in self_v],
                              cross_k, cross_v, cross_mask, bias_table[:, :, t:t + 1, :w])


def compile_failed(runs: str, what: str, err: Exception) -> str:
    """One line on stderr: ``runs`` goes on eagerly because compiling ``what`` failed with ``err``
    (its first line). Returns the reason."""
    from rlhf.errors import first_line

    why = f"{type(err).__name__}: {first_line(err)}"
    print(f"{runs} runs eagerly: compiling {what} failed ({why})", file=sys.stderr)
    return why


class EndCheck:
    """Has every row ended? On a CPU, asked after each step. On a GPU, reading the answer waits for
    the step's kernels, so the loop reads the previous step's answer instead, while this step's
    kernels run: the host queues ahead and the GPU never idles on it. When the previous step had
    already ended every row, this step was one too many (``overshot``): its tokens are dropped and
    the random numbers it drew are given back (the generator's state from before it), so the
    tokens and the generator end as an immediate check leaves them."""

    def __init__(self, device: torch.device, lagged: bool | None = None):
        self.device, self.cuda = device, device.type == "cuda"
        self.lagged = self.cuda if lagged is None else lagged  # lagged on a CPU: for tests
        self.overshot = False
        if self.lagged:
            self.flags = [torch.ones((), dtype=torch.bool, pin_memory=self.cuda) for _ in range(2)]
            self.events = [torch.cuda.Event(), torch.cuda.Event()] if self.cuda else None
            self.t, self.rng = 0, None

    def before_step(self) -> None:
        if self.lagged:  # a CUDA generator's state is the host's (seed, offset): no sync
            self.rng = torch.cuda.get_rng_state(self.device) if self.cuda else torch.get_rng_state()

    def __call__(self, unfinished: torch.Tensor) -> bool:
        if not self.lagged:
            return not bool(unfinished.any())
        i, self.t = self.t % 2, self.t + 1
        self.flags[i].copy_(unfinished.any(), non_blocking=self.cuda)
        if self.cuda:  # on the stream the copy was queued on, whichever device is current
            self.events[i].record(torch.cuda.current_stream(self.device))
        if self.t == 1:
            return False
        if self.cuda:
            self.events[1 - i].synchronize()  # the previous step's answer: this step is still queued behind it
        if bool(self.flags[1 - i]):
            return False
        self.overshot = True
        if self.cuda:
            torch.cuda.set_rng_state(self.rng, self.device)
        else:
            torch.set_rng_state(self.rng)
        return True


ATTRIBUTE = "_rlhf_decoder"  # where a model keeps its Decoder: freed with the model (a cycle the GC collects)


def decoder_for(lm, compile: bool = False) -> Decoder | None:
    """``lm``'s :class:`Decoder` (one per model and setting, so a compiled step is compiled once per
    run), or None when ``lm`` is not a T5 this decoder serves (callers then use ``generate``)."""
    if base_t5(lm) is None:
        return None
    decoder = lm.__dict__.get(ATTRIBUTE)
    if decoder is None or decoder.asked_compile != compile:
        decoder = Decoder(lm, compile=compile)
        lm.__dict__[ATTRIBUTE] = decoder  # not a submodule: never in a state dict
    return decoder
