"""Numbers in words (Chinese numerals, English words) for arithmetic facts."""
from __future__ import annotations

_ZH_DIG = "零一二三四五六七八九"


def zh_number(n: int) -> str:
    if n < 0:
        return "负" + zh_number(-n)
    if n < 10:
        return _ZH_DIG[n]
    if n < 20:
        return "十" + (_ZH_DIG[n % 10] if n % 10 else "")
    if n < 100:
        return _ZH_DIG[n // 10] + "十" + (_ZH_DIG[n % 10] if n % 10 else "")
    if n < 1000:
        rest = n % 100
        head = _ZH_DIG[n // 100] + "百"
        if rest == 0:
            return head
        if rest < 10:
            return head + "零" + _ZH_DIG[rest]
        return head + (_ZH_DIG[rest // 10] + "十" + (_ZH_DIG[rest % 10] if rest % 10 else ""))
    return str(n)


EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def en_number(n: int) -> str:
    if n < 20:
        return EN_ONES[n]
    if n < 100:
        return EN_TENS[n // 10] + ("-" + EN_ONES[n % 10] if n % 10 else "")
    return str(n)
