"""The RL policy: a seq2seq LM (LoRA or full), a value head for PPO (none for the critic-free
methods), and its frozen reference.

Reference choice. With LoRA, the SFT adapter is merged into the base weights and a *fresh* LoRA is
trained on top. LoRA's B matrices start at zero, so the starting policy equals the SFT model, and
running the same weights with the adapter disabled gives exactly that SFT model at every step:
the reference costs no second copy of the weights and can never drift. Without LoRA, the
reference is a frozen copy (TRL's ``create_reference_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhf.config import ExperimentConfig
from rlhf.errors import UserError, first_line
from rlhf.models import apply_lora, fp32_output_layer, load_seq2seq, refuse_trainable_encoder
from rlhf.seq2seq import as_encoder_outputs, reference
from rlhf.sft import start_paths


class ValueHead(nn.Module):
    """``Linear(d_model, 1)`` on the decoder's last hidden state: [B, T, d] -> [B, T] fp32 values,
    outside autocast."""

    def __init__(self, d_model: int, init_std: float = 0.0):
        super().__init__()
        self.summary = nn.Linear(d_model, 1)
        nn.init.normal_(self.summary.weight, std=init_std) if init_std > 0 else nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # values, returns and the value loss in fp32
            return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1).float()


@dataclass
class ForwardOut:
    logits: torch.Tensor  # [B, T, V]
    values: torch.Tensor | None  # [B, T]


class Policy(nn.Module):
    """LM (+ value head for PPO); :meth:`reference` is the frozen reference (:func:`rlhf.seq2seq.reference`)."""

    def __init__(self, lm: nn.Module, value_head: ValueHead | None, ref_lm: nn.Module | None = None):
        super().__init__()
        self.lm, self.value_head = lm, value_head
        self.ref_lm = ref_lm  # only without LoRA; with LoRA the reference is the adapter-disabled lm
        self._train_forward = None  # torch.compile'd ``lm.forward`` (rl.compile); a function, not a submodule

    def compile_training_forward(self) -> str | None:
        """Compile ``lm.forward`` for the passes that build a graph (the PPO update); the no-grad
        passes, generation and the reference stay eager. Shapes are dynamic (each mini-batch is cut
        to its longest prompt), so one compile serves the run; inductor caches it on disk
        (``TORCHINDUCTOR_CACHE_DIR``) for later runs. Returns why it stays eager, or None."""
        from rlhf.runtime import compile_unavailable

        why = compile_unavailable(next(self.lm.parameters()).device)
        if why is None:
            self._train_forward = torch.compile(self.lm.forward, dynamic=True)
        return why

    @property
    def compiled(self) -> bool:
        """Whether the training forward runs compiled (after any fallback)."""
        return self._train_forward is not None

    def eager_training_forward(self) -> None:
        """Undo :meth:`compile_training_forward` (a policy reused without ``rl.compile``)."""
        self._train_forward = None

    def _compiled(self, inputs: dict):
        """The compiled forward; if compiling it fails (toolchain, an op inductor cannot lower), one
        line on stderr, and this and every later pass run eagerly."""
        try:
            return self._train_forward(**inputs)
        except Exception as err:  # the failed compile ran nothing, so the eager retry is exact
            import sys

            self._train_forward = None
            print(f"rl: rl.compile: compiling the update failed ({type(err).__name__}: {first_line(err)}); "
                  "running eagerly", file=sys.stderr, flush=True)
            return self.lm(**inputs)

    @property
    def is_lora(self) -> bool:
        return hasattr(self.lm, "disable_adapter")

    def forward(self, input_ids, attention_mask, decoder_input_ids, with_values: bool = True,
                encoder_states: torch.Tensor | None = None, repeats: torch.Tensor | None = None) -> ForwardOut:
        """``encoder_states`` [B, S, d]: this policy's encoder outputs for ``input_ids``, if already
        computed (then only the decoder runs). Values only with a value head.

        ``repeats`` [B]: how many decoder rows each encoder row serves (a prompt's k responses): the
        encoder runs once per prompt, here, in this forward (so DDP sees every weight it uses), and
        its states are repeated; ``decoder_input_ids`` then has ``repeats.sum()`` rows."""
        with_values = with_values and self.value_head is not None
        if repeats is not None:
            if encoder_states is None:
                encoder_states = self.lm.get_encoder()(input_ids=input_ids,
                                                       attention_mask=attention_mask).last_hidden_state
            repeats = repeats.to(input_ids.device)
            input_ids, attention_mask, encoder_states = (t.repeat_interleave(repeats, dim=0)
                                                         for t in (input_ids, attention_mask, encoder_states))
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                      encoder_outputs=as_encoder_outputs(encoder_states), output_hidden_states=with_values,
                      use_cache=False)
        out = self._compiled(inputs) if self.compiled and torch.is_grad_enabled() else self.lm(**inputs)
        values = self.value_head(out.decoder_hidden_states[-1]) if with_values else None
        return ForwardOut(out.logits, values)

    def reference(self):
        """Context: the reference LM (:func:`rlhf.seq2seq.reference`)."""
        return reference(self.lm, self.ref_lm)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.named_parameters() if v.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = [k for k, p in params.items() if p.requires_grad and k not in state]
        if missing:
            raise UserError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)


def build_policy(config: ExperimentConfig, sft_dir: Path | None) -> Policy:
    """The starting policy (= the SFT model), with a value head for PPO, and its reference."""
    from transformers import set_seed

    base_path, adapter = start_paths(config, sft_dir)
    lm = load_seq2seq(config.model, base_path)
    if adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
    fp32_output_layer(lm)  # logprobs, KL and losses from fp32 logits, also under mixed precision
    set_seed(config.seed)
    ref_lm = None
    if config.rl.policy == "lora":
        lm = apply_lora(lm, config.rl.lora, decoder_only=config.rl.frozen_encoder, key="rl.lora")
    else:
        import copy

        # a frozen copy, as TRL's create_reference_model (now only in trl.experimental) makes it
        ref_lm = copy.deepcopy(lm).eval().requires_grad_(False)
        lm.requires_grad_(True)
    if config.rl.frozen_encoder:  # rl.policy lora: rlhf.configcheck
        refuse_trainable_encoder(lm)
    head = ValueHead(lm.config.d_model, config.rl.ppo.value_head_init_std) if config.rl.algorithm == "ppo" else None
    return Policy(lm, head, ref_lm).eval()
