import torch

from rlhf.seq2seq import encode_queries, encoder_states

from .conftest import make


def test_encoder_states_in_length_cut_chunks_match_one_padded_pass(tmp_path):
    trainer, _ = make(tmp_path)
    q = encode_queries(trainer.tokenizer, trainer.batch_prompts(0), 256)
    assert q.attention_mask.sum(-1).unique().numel() > 1  # prompts of different lengths
    lm = trainer.policy.lm
    with torch.no_grad():
        whole = lm.get_encoder()(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
    chunked = encoder_states(lm, q, chunk_size=1)
    real = q.attention_mask.bool()
    torch.testing.assert_close(chunked[real], whole[real], atol=1e-5, rtol=1e-4)
    assert (chunked[~real] == 0).all()
