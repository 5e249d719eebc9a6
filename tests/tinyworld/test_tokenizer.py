from transformers import AutoTokenizer


def test_tokenizer_round_trip_and_t5_ids(world):
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    text = "#Person1#: Hello, can I book a table for two on Friday?"
    ids = tok(text).input_ids
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
