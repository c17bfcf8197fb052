"""The offline CLIP tokenizer against the official MineCLIP ids (HF fast tokenizer path)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from steve1.models.tokenizer import (BOS_ID, EOS_ID, VOCAB_SHA256, ClipTokenizer, get_tokenizer, normalize,
                                     tokenize)


@pytest.fixture(scope="module")
def goldens(reference):
    return json.loads((reference / "mineclip" / "tokenizer_goldens.json").read_text())


def test_all_golden_and_edge_case_prompts(goldens):
    entries = goldens["entries"]
    assert len(entries) == 42
    rows = tokenize([e["text"] for e in entries])
    assert rows.shape == (42, 77) and rows.dtype == torch.int64
    for row, e in zip(rows.tolist(), entries):
        assert row == e["ids"] + [goldens["pad_id"]] * (77 - len(e["ids"])), repr(e["text"])
        assert row.index(EOS_ID) == e["eot_pool_index"]


def test_curly_quotes_differ_from_openai_clip_tokenize():
    assert get_tokenizer().encode("Don’t") == [847, 728, 503, 339]          # HF; OpenAI gives [847, 713]


def test_truncation_keeps_bos_75_ids_eos():
    row = tokenize("tree " * 100)[0]
    assert row[0] == BOS_ID and row[76] == EOS_ID and (row[1:76] == 2677).all()


def test_well_known_ids_and_special_tokens():
    assert tokenize("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert get_tokenizer().encode("a<|endoftext|>b") == [320, EOS_ID, 321]
    assert normalize("  ΣΑ\t\nB ") == " σα b "                             # per-code-point lowercasing


def test_vocabulary_checksum_is_enforced(tmp_path):
    bad = tmp_path / "vocab.txt.gz"
    bad.write_bytes(b"not the vocabulary")
    with pytest.raises(ValueError, match=f"differs from the CLIP vocabulary's {VOCAB_SHA256}"):
        ClipTokenizer.from_vocab_file(bad)


# --- Special tokens typed in a prompt, in any letter case (HF added-token rules) -----------------

def _case_variants(word: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in word)


def test_start_token_matches_in_any_letter_case_and_inside_words():
    tok = get_tokenizer()
    abc, dfe, chop, a, tree = (tok.encoder[w + "</w>"] for w in ("abc", "def", "chop", "a", "tree"))
    assert (abc, dfe) == (5334, 11649)
    for spelling in ("<|startoftext|>", "<|STARTOFTEXT|>", "<|StartOfText|>", "<|sTaRtOfTeXt|>"):
        assert tok.encode(spelling) == [BOS_ID], spelling
        assert tok.encode(f"abc{spelling}def") == [abc, BOS_ID, dfe], spelling
    assert tok.encode("chop<|Startoftext|>a tree") == [chop, BOS_ID, a, tree]
    x, y = tok.encoder["x</w>"], tok.encoder["y</w>"]
    assert tok.encode("x<|startoftext|><|STARTOFTEXT|>y") == [x, BOS_ID, BOS_ID, y]
    # Matched in the normalised text: whitespace runs fold first, and what precedes the token is
    # pre-tokenised on its own ("İ" lowercases to "i" + U+0307, which stays a pre-token by itself).
    assert tok.encode("a\u00a0<|STARTOFTEXT|>\tb") == [a, BOS_ID, tok.encoder["b</w>"]]
    assert tok.encode("\u0130<|STARTOFTEXT|>") == [tok.encoder["i</w>"], tok.encoder["\u00cc\u0129</w>"], BOS_ID]
    # Not the token: the literal must be whole after normalisation.
    assert BOS_ID not in tok.encode("<|start of text|>") + tok.encode("<|startoftext |>")


def test_end_token_matches_only_as_written_and_other_cases_split_in_three():
    tok = get_tokenizer()
    abc, dfe = tok.encoder["abc</w>"], tok.encoder["def</w>"]
    assert tok.encode("abc<|endoftext|>def") == [abc, EOS_ID, dfe]
    # "<|ENDOFTEXT|>" is lower-cased, caught whole by CLIP's pattern, then split by the byte-level
    # pattern into "<|", "endoftext", "|>": "<" "|</w>", "endof" "text</w>", "|" "></w>".
    pieces = [tok.encoder[s] for s in ("<", "|</w>", "endof", "text</w>", "|", "></w>")]
    assert pieces == [27, 347, 40786, 4160, 91, 285]
    for spelling in ("<|ENDOFTEXT|>", "<|EndOfText|>", "<|endofTEXT|>"):
        assert tok.encode(spelling) == pieces, spelling
        assert tok.encode(f"abc{spelling}def") == [abc, *pieces, dfe], spelling
    assert tok.encode("<|ENDOFTEXT|>") == tok.encode("<| endoftext |>")


def test_prompt_rows_with_case_variants_pool_at_the_real_end_token():
    row = tokenize("chop <|StartOfText|>a tree <|ENDOFTEXT|>")[0].tolist()
    assert row[:5] == [BOS_ID, get_tokenizer().encoder["chop</w>"], BOS_ID, 320, 2677]
    assert row.index(EOS_ID) == 5 + 6 and row[12:] == [0] * 65     # the typed end token is text


# --- The same strings through the Hugging Face tokenizer, built offline from the same files -------

# vocab.json / merges.txt derived from the packaged BPE file by the published CLIP rule; these are
# the digests recorded in ../shared/reference/mineclip/facts.json (tokenizer.derivation), i.e. the
# files the official MineCLIP ``tokenize_batch`` ran on when the goldens were made.
VOCAB_JSON_SHA256 = "3f0c4f7d2086b61b38487075278ea9ed04edb53a03cbb045b86c27190fa8fb69"
MERGES_TXT_SHA256 = "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"
# Added-token flags of the hub's openai/clip-vit-base-patch16 tokenizer.json: the start token is
# matched in the normalised text, the end token in the raw text. (The hub file itself cannot be
# fetched here; a plain vocab/merges load flags both tokens normalized=false.)
HUB_ADDED_TOKENS = {
    str(BOS_ID): {"content": "<|startoftext|>", "normalized": True},
    str(EOS_ID): {"content": "<|endoftext|>", "normalized": False},
}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="transformers is needed to build the HF CLIP tokenizer")
    tok = get_tokenizer()
    folder = tmp_path_factory.mktemp("hf_clip")
    vocab = json.dumps(tok.encoder, ensure_ascii=False).encode("utf-8")
    ranked = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    merges = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranked)).encode("utf-8")
    assert hashlib.sha256(vocab).hexdigest() == VOCAB_JSON_SHA256
    assert hashlib.sha256(merges).hexdigest() == MERGES_TXT_SHA256
    (folder / "vocab.json").write_bytes(vocab)
    (folder / "merges.txt").write_bytes(merges)
    flags = {"lstrip": False, "rstrip": False, "single_word": False, "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "added_tokens_decoder": {i: {**t, **flags} for i, t in HUB_ADDED_TOKENS.items()},
    }))
    try:
        hf = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
    except Exception as e:                                    # noqa: BLE001 - any failure means "cannot build"
        pytest.skip(f"the HF CLIP tokenizer could not be built offline from vocab.json/merges.txt: {e}")
    added = {t.content: t.normalized for t in hf.added_tokens_decoder.values()}
    if added != {t["content"]: t["normalized"] for t in HUB_ADDED_TOKENS.values()}:
        pytest.skip(f"transformers {transformers.__version__} ignored the hub's added-token flags: {added}")
    return hf


def _fuzz_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    fragments = ["<|startoftext|>", "<|endoftext|>", "startoftext", "endoftext", "<|", "|>", "<", ">", "|",
                 "chop", "a tree", "Dig", "'s", "'LL", "don’t", "42", "!!", "...", " ", "  ", "\t", "\n", "\u00a0",
                 "\u0130", "ΣΑ", "é", "e\u0301", "本", "😀", "&amp;", "<torch>"]
    out = []
    for _ in range(n):
        parts = rng.choices(fragments, k=rng.randint(1, 8))
        out.append("".join(_case_variants(p, rng) if rng.random() < 0.5 else p for p in parts))
    return out


HAND_CASES = [
    "<|startoftext|>", "<|STARTOFTEXT|>", "<|StartOfText|>", "abc<|startoftext|>def", "abc<|STARTofTEXT|>def",
    "<|endoftext|>", "<|ENDOFTEXT|>", "<|EndOfText|>", "abc<|endoftext|>def", "abc<|ENDOFTEXT|>def",
    "x<|startoftext|><|STARTOFTEXT|>y", "it<|STARTOFTEXT|>'s", "\u0130<|STARTOFTEXT|>", "a\u00a0<|STARTOFTEXT|>\tb",
    "<<|startoftext|>>", "<|<|endoftext|>|>", "<|ENDOFTEXT|><|STARTOFTEXT|>", "!<|ENDOFTEXT|>", "<|startOFtext|>12",
    "<|start of text|>", "chop a tree",
]


def test_hugging_face_tokenizer_gives_the_same_ids(hf_tokenizer):
    tok = get_tokenizer()
    texts = HAND_CASES + _fuzz_strings(400, seed=17)
    mismatches = [(t, hf_tokenizer(t, add_special_tokens=False)["input_ids"], tok.encode(t)) for t in texts]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ; first (text, HF, ours): {mismatches[0]}"
    for literal in ("<|startoftext|>", "<|endoftext|>"):                 # the fuzz did type case variants
        assert sum(literal in t.lower() and literal not in t for t in texts) > 20, literal
