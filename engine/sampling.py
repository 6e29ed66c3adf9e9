"""Token selection. Greedy (argmax, first index on ties — llama.cpp's greedy sampler keeps the first
maximum) is the default; seeded sampling reproduces llama.cpp's sampler chain as
llama-cpp-python builds it (llama.py _init_sampler): top-k → typical → top-p → min-p →
temperature → dist, with std::mt19937 seeded by `seed` and libstdc++'s arithmetic, so a seeded
sampled run gives the same tokens as llama.cpp's (src/llama-sampler.cpp):

- top-k: the k largest logits, sorted descending (k ≤ 0: everything, unsorted).
- typical: only p ≥ 1 (a no-op) is supported.
- top-p: softmax in float (expf, float running sum), then the shortest sorted prefix whose float
  cumulative probability reaches p (at least min_keep).
- min-p: keep logits ≥ max_logit + logf(min_p) (at least min_keep).
- temperature: logits / t in float (t ≤ 0 keeps only the argmax).
- dist: p_i = expf(l_i − max) in float, summed in double; one
  std::uniform_real_distribution<double>(0, 1) draw = generate_canonical<double, 53> (two
  mt19937 outputs, r1 + r2·2³² in double, divided by 2⁶⁴); the first token whose double running
  sum reaches sum·u is chosen.

`chain="bitnet.cpp"` (SamplingParams.chain) runs the same six samplers as bitnet.cpp's llama.cpp
fork (October 2024, src/llama-sampling.cpp) has them. Its dist does not softmax: it draws from the
`p` fields the candidates still carry, so only top-p writes what is drawn from:

- top-k (llama_sampler_top_k_impl): k ≤ 0 means k = n; the k largest, sorted descending — always,
  so the candidates stay sorted for min-p (std::partial_sort for k ≤ 128; above, 128 buckets of
  the logits over [−10, 10] and std::sort within each: the same order but for ties).
- typical: only p ≥ 1 (a no-op).
- top-p (llama_sampler_top_p_apply), only for p < 1: llama_sampler_softmax_impl writes
  p_i = expf(l_i − l_0) / Σ_f expf(l_j − l_0) (float running sum, float division) into every
  candidate, then cuts as above. For p ≥ 1 every p_i stays the 0 the caller set.
- min-p (llama_sampler_min_p_apply, its sorted path): keep while l_i ≥ l_0 + logf(min_p), at least
  max(1, min_keep).
- temperature (llama_sampler_temp_apply): l_i / t on the logits alone, which dist never reads:
  no effect on the pick.
- dist (llama_sampler_dist_apply → llama_sample_dist): std::discrete_distribution<int> over the n
  candidates' p_i (libstdc++, bits/random.tcc): n < 2 → index 0, no draw; else w_i = (double) p_i,
  S = Σ w_i in double from 0.0 in order (std::accumulate), c_i = Σ_{j≤i} w_j / S in double
  (std::partial_sum), c_{n−1} := 1; u = generate_canonical<double, 53> as above; the pick is the
  first i with c_i ≥ u (std::lower_bound). S = 0 (no top-p) makes every c_i but the last NaN and
  lower_bound stops at i = 0: the largest logit after top-k, whatever u and the temperature.
- seed (llama_sampler_init_dist): std::mt19937(seed), as above.

gemma.cpp's mode (its defaults: top_k 1 = argmax, temperature 1.0) is `gemmacpp_defaults`.
Known difference: exactly tied logits are ordered lower id first here, while llama.cpp orders them
by std::partial_sort's heap mechanics (the fork's top-k above 128: by std::sort's); a tie inside the
candidate set can change a sampled pick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32
CHAINS = ("llama.cpp", "bitnet.cpp")  # SamplingParams.chain: whose sampler chain Sampler runs


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


class MT19937:
    """std::mt19937 (32-bit Mersenne Twister, seeded as std::mersenne_twister_engine(seed))."""

    N, M = 624, 397

    def __init__(self, seed: int):
        mt = [0] * self.N
        mt[0] = seed & 0xFFFFFFFF
        for i in range(1, self.N):
            mt[i] = (1812433253 * (mt[i - 1] ^ (mt[i - 1] >> 30)) + i) & 0xFFFFFFFF
        self.mt, self.idx = mt, self.N

    def _twist(self) -> None:
        mt, n, m = self.mt, self.N, self.M
        for i in range(n):
            y = (mt[i] & 0x80000000) | (mt[(i + 1) % n] & 0x7FFFFFFF)
            mt[i] = mt[(i + m) % n] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.idx = 0

    def __call__(self) -> int:
        if self.idx >= self.N:
            self._twist()
        y = self.mt[self.idx]
        self.idx += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y & 0xFFFFFFFF

    def canonical(self) -> float:
        """libstdc++ generate_canonical<double, 53>: two draws, (r1 + r2·2³²) / 2⁶⁴ in double."""
        r1 = float(self())
        s = r1 + float(self()) * 4294967296.0
        u = s / 18446744073709551616.0
        return u if u < 1.0 else float(np.nextafter(1.0, 0.0))


def _logf(x: float) -> F32:
    return F32(np.log(np.float64(F32(x))))


def _expf(x: np.ndarray) -> np.ndarray:
    """float expf: exp in double rounded to float (the correctly rounded value)."""
    return np.exp(x.astype(np.float64)).astype(F32)


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    seed: int = 42
    min_keep: int = 1
    chain: str = "llama.cpp"  # one of CHAINS: llama.cpp's chain, or bitnet.cpp's fork's (module docstring)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p,
                "typical_p": self.typical_p, "seed": self.seed, "chain": self.chain}  # fmt: skip


def gemmacpp_defaults(seed: int = 42) -> SamplingParams:
    """gemma.cpp's sampling defaults: top_k 1 (argmax), temperature 1.0, no top-p/min-p."""
    return SamplingParams(temperature=1.0, top_k=1, top_p=1.0, min_p=0.0, seed=seed)


def _top_k(ids: np.ndarray, logit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """llama_sampler_top_k_impl (both chains): the k ≤ n largest logits, sorted descending; ties
    keep the lower id first → (ids, logits)."""
    part = np.argpartition(-logit, k - 1)[:k] if k < len(logit) else np.arange(len(logit))
    order = part[np.lexsort((part, -logit[part]))]
    return ids[order], logit[order]


def _top_p(logit: np.ndarray, top_p: float, min_keep: int) -> tuple[np.ndarray, int]:
    """llama_sampler_softmax_impl and top-p's cut over sorted logits (both chains) → (p, last):
    p_i = expf(l_i − l_0) / Σ p (float running sum, float division), and the length of the shortest
    prefix whose float cumulative p reaches top_p (at least min_keep)."""
    e = _expf(logit - logit[0])
    probs = e / np.cumsum(e, dtype=F32)[-1]
    cum = np.cumsum(probs, dtype=F32)
    hit = np.nonzero((cum >= F32(top_p)) & (np.arange(1, len(cum) + 1) >= min_keep))[0]
    return probs, int(hit[0]) + 1 if len(hit) else len(cum)


def _min_p_sorted(logit: np.ndarray, min_p: float, min_keep: int) -> int:
    """llama_sampler_min_p_apply's sorted path (both chains): how many leading candidates keep
    l_i ≥ l_0 + logf(min_p) (at least max(1, min_keep))."""
    below = np.nonzero((logit < logit[0] + _logf(min_p)) & (np.arange(len(logit)) >= max(1, min_keep)))[0]
    return int(below[0]) if len(below) else len(logit)


class Sampler:
    """llama.cpp's default sampler chain (or bitnet.cpp's, params.chain) with its RNG; one
    instance per generation."""

    def __init__(self, params: SamplingParams):
        if params.typical_p < 1.0:
            raise ValueError("typical sampling (typical_p < 1) is not supported")
        if params.chain not in CHAINS:
            raise ValueError(f"sampler chain must be one of {', '.join(CHAINS)}, not {params.chain!r}")
        self.p = params
        self.rng = MT19937(params.seed)
        # per call: the uniform draw u and the chosen token's interval [lo, hi) of cumulative
        # probability — how close u came to picking a neighbour (crossval reports it at divergences)
        self.trace: list[dict] = []

    def __call__(self, logits: np.ndarray) -> int:
        return self._bitnetcpp(logits) if self.p.chain == "bitnet.cpp" else self._llamacpp(logits)

    def _llamacpp(self, logits: np.ndarray) -> int:
        p = self.p
        logit = np.asarray(logits, dtype=F32)
        ids = np.arange(len(logit))
        is_sorted = False
        # top-k (llama_sampler_top_k_impl): k largest, descending; ties keep the lower id first
        if p.top_k > 0:
            ids, logit = _top_k(ids, logit, min(p.top_k, len(logit)))
            is_sorted = True
        # top-p (llama_sampler_top_p_apply)
        if p.top_p < 1.0:
            if not is_sorted:
                order = np.lexsort((ids, -logit))
                ids, logit, is_sorted = ids[order], logit[order], True
            _, last = _top_p(logit, p.top_p, p.min_keep)
            ids, logit = ids[:last], logit[:last]
        # min-p (llama_sampler_min_p_apply)
        if p.min_p > 0.0 and len(logit):
            if is_sorted:
                n = _min_p_sorted(logit, p.min_p, p.min_keep)
                ids, logit = ids[:n], logit[:n]
            else:
                min_logit = logit.max() + _logf(p.min_p)
                keep = logit >= min_logit
                if keep.sum() >= p.min_keep:
                    ids, logit = ids[keep], logit[keep]
        # temperature (llama_sampler_temp_impl)
        if p.temperature <= 0.0:
            j = int(np.argmax(logit))
            self.trace.append({"u": None, "lo": 0.0, "hi": 1.0})
            return int(ids[j])
        logit = logit / F32(p.temperature)
        # dist (llama_sampler_dist_apply)
        u = self.rng.canonical()
        if len(logit) == 1:
            self.trace.append({"u": u, "lo": 0.0, "hi": 1.0})
            return int(ids[0])
        max_l = logit[0] if is_sorted else logit.max()
        run = np.cumsum(_expf(logit - max_l).astype(np.float64))  # sequential double sums, in order
        j = min(int(np.searchsorted(run, run[-1] * u, side="left")), len(ids) - 1)
        self.trace.append({"u": u, "lo": float(run[j - 1] / run[-1]) if j else 0.0, "hi": float(run[j] / run[-1])})
        return int(ids[j])

    def _bitnetcpp(self, logits: np.ndarray) -> int:
        """The fork's chain (module docstring): a draw over the p fields top-p left, or index 0."""
        p = self.p
        logit = np.asarray(logits, dtype=F32)
        n = len(logit)
        # top-k (the fork's llama_sampler_top_k_impl): k ≤ 0 sorts all n; ties keep the lower id first
        k = n if p.top_k <= 0 else min(p.top_k, n)
        ids, logit = _top_k(np.arange(n), logit, k)
        prob = np.zeros(k, dtype=F32)  # the p fields (crossval/backends/llamacpp.py token_data: 0)
        # top-p (llama_sampler_top_p_apply → llama_sampler_softmax_impl), float throughout
        if F32(p.top_p) < F32(1.0):
            prob, last = _top_p(logit, p.top_p, p.min_keep)
            ids, logit, prob = ids[:last], logit[:last], prob[:last]
        # min-p (llama_sampler_min_p_apply, sorted path)
        if F32(p.min_p) > F32(0.0) and len(logit):
            m = _min_p_sorted(logit, p.min_p, p.min_keep)
            ids, prob = ids[:m], prob[:m]
        # temperature divides the logits only; dist (llama_sample_dist: std::discrete_distribution)
        if len(ids) < 2:
            self.trace.append({"u": None, "lo": 0.0, "hi": 1.0})
            return int(ids[0])
        w = prob.astype(np.float64)
        total = np.cumsum(w)[-1]  # std::accumulate from 0.0, in order
        u = self.rng.canonical()
        if total == 0.0:  # no top-p: NaN cumulative values, lower_bound stops at the first candidate
            self.trace.append({"u": u, "lo": 0.0, "hi": 1.0})
            return int(ids[0])
        cp = np.cumsum(w / total)  # std::partial_sum in double
        cp[-1] = 1.0
        j = int(np.searchsorted(cp, u, side="left"))  # std::lower_bound: first c_j ≥ u
        self.trace.append({"u": u, "lo": float(cp[j - 1]) if j else 0.0, "hi": float(cp[j])})
        return int(ids[j])
