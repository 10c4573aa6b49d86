"""Byte-level BPE learnt in code, for CLIP tokenizers that need no hub (the tiny preset, the toy world).

Below `livo.presets` and `livo.toy`, which both build tokenizers from it, so neither imports the other for it.
"""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def learn_bpe_merges(words) -> list[tuple[str, str]]:
    """Byte-pair merges learned on `words` (each counted once) until every word is one token. Ties break on the
    smallest pair, so the result is deterministic; applying the merges in rank order rebuilds each word."""
    from collections import Counter

    encoder = bytes_to_unicode()
    segmented = []
    for word in dict.fromkeys(words):
        if word:
            chars = [encoder[b] for b in word.encode("utf-8")]
            segmented.append(chars[:-1] + [chars[-1] + "</w>"])
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for symbols in segmented for p in zip(symbols, symbols[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i, symbols in enumerate(segmented):
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            segmented[i] = merged
