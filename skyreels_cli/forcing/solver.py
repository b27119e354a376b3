"""UniPC for every latent frame of a diffusion forcing window, advanced one step-matrix row at a time.

Each frame has its own solver history (as in the official code) and frames sit at different steps of one timestep
grid. The reference keeps one diffusers `UniPCMultistepScheduler` copy per frame and steps them frame by
frame (`PerFrame`): about 40 small operations per frame per row, each a kernel launch on a GPU.
`VectorisedUniPC` holds the same state as tensors indexed by frame and does a row in about twenty
operations over all its frames, in place in preallocated buffers: the per-frame scalars (sigma ratios, exponential factors, the corrector's rho) depend only on a frame's step
index and order, so they are tabulated once per window with diffusers' own scalar arithmetic and gathered
per row; the tensor arithmetic is diffusers' expressions with those scalars broadcast over frames.

One quirk of the reference samplers is kept on purpose: the official code and the diffusers pipelines pass
a *view* of the latents as `sample`, which UniPC keeps as `last_sample` on a step without corrector; the
write-back of the step's output then overwrites it, so the kept sample is the output. The per-frame copies
here do the same, and the vectorised solver reproduces it, so frames equal the reference pipelines'.
"""

from __future__ import annotations

import copy

import torch
from diffusers import UniPCMultistepScheduler

SOLVERS = ("vectorised", "per-frame")

# The methods whose arithmetic VectorisedUniPC reproduces: a subclass changing any of them is not supported.
_MIRRORED = ("step", "convert_model_output", "multistep_uni_p_bh_update", "multistep_uni_c_bh_update",
             "_sigma_to_alpha_sigma_t", "index_for_timestep", "_init_step_index")


class PerFrame:
    """The reference for any diffusers scheduler (UniPC here, Euler in euler.py): one deep copy per frame, stepped
    frame by frame."""

    def __init__(self, scheduler: UniPCMultistepScheduler, steps: int, frames: int, device: torch.device) -> None:
        template = copy.deepcopy(scheduler)
        template.set_timesteps(steps, device=device)
        self.timesteps = template.timesteps
        self.schedulers = [copy.deepcopy(template) for _ in range(frames)]

    def step(self, velocity: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor,
             update: torch.Tensor) -> torch.Tensor:
        """Advance the frames marked in `update` (bool [frames]) in place; `timesteps` is the row's ([frames])."""
        for f in torch.nonzero(update).flatten().tolist():
            latents[:, :, f] = self.schedulers[f].step(velocity[:, :, f], timesteps[f], latents[:, :, f],
                                                       return_dict=False)[0]
        return latents

    def frame_state(self, frame: int) -> dict:
        """One frame's UniPC state, in the vectorised solver's terms (for comparing the two)."""
        s = self.schedulers[frame]
        return {"step_index": s.step_index, "lower_order_nums": s.lower_order_nums,
                "this_order": getattr(s, "this_order", 0), "model_outputs": list(s.model_outputs),
                "last_sample": s.last_sample}


def supports(scheduler) -> bool:
    """Whether `VectorisedUniPC` reproduces `scheduler` (the flow-matching UniPC `make_scheduler` builds).

    Not bh1: with flow sigmas ending at 0 its last step multiplies -inf by 0 in diffusers (NaN frames).
    """
    if not isinstance(scheduler, UniPCMultistepScheduler):
        return False
    if any(getattr(type(scheduler), name) is not getattr(UniPCMultistepScheduler, name) for name in _MIRRORED):
        return False
    c = scheduler.config
    return (c.prediction_type == "flow_prediction" and c.use_flow_sigmas and scheduler.predict_x0
            and c.solver_type == "bh2" and c.solver_order in (1, 2) and c.lower_order_final
            and not c.thresholding and scheduler.solver_p is None)


def make_solver(scheduler, steps: int, frames: int, device: torch.device, kind: str = "vectorised"):
    """The solver for one window: vectorised where supported, else the per-frame scheduler copies."""
    if kind not in SOLVERS:
        raise ValueError(f"unknown solver {kind!r}; expected one of {SOLVERS}")
    if kind == "vectorised" and supports(scheduler):
        return VectorisedUniPC(scheduler, steps, frames, device)
    return PerFrame(scheduler, steps, frames, device)


# Columns of the coefficient tables. Predictor: x' = ratio*x - a_h*m0 - a_b*(rho*(m1 - m0)/rk).
# Corrector: x_c = ratio*last - a_h*m0 - a_b*(rho*(m1 - m0)/rk + rho_t*(m - m0)). Order-1 rows have
# rho = 0 and rk = 1, so the history term is an exact zero whatever the unused history holds.
_P = ("ratio", "a_h", "a_b", "rk", "rho")
_C = ("ratio", "a_h", "a_b", "rk", "rho", "rho_t")


class VectorisedUniPC:
    """UniPC state for all frames of a window as tensors; `step` equals the per-frame copies' steps."""

    def __init__(self, scheduler: UniPCMultistepScheduler, steps: int, frames: int, device: torch.device) -> None:
        if not supports(scheduler):
            raise ValueError("VectorisedUniPC supports flow-prediction bh2 UniPC of order 1 or 2 only; "
                             "use PerFrame")
        self.template = copy.deepcopy(scheduler)
        self.template.set_timesteps(steps)
        self.timesteps = self.template.timesteps
        self.device = torch.device(device)
        self.order = self.template.config.solver_order
        self.disabled = set(self.template.config.disable_corrector)
        self.sigmas = self.template.sigmas.float()  # CPU, like the scheduler's own
        self.predictor, self.corrector = _tables(self.template)
        # Per-frame counters stay on the CPU: deciding what each frame does never waits for the GPU.
        self.step_index = torch.full((frames,), -1, dtype=torch.long)  # -1: not started
        self.lower_order_nums = torch.zeros(frames, dtype=torch.long)
        self.this_order = torch.zeros(frames, dtype=torch.long)
        self.has_last = torch.zeros(frames, dtype=torch.bool)
        self.history: list[torch.Tensor] = []  # solver_order x0 predictions like latents, oldest first
        self.last: torch.Tensor | None = None  # the sample each frame's corrector starts from
        self.work: list[torch.Tensor] = []

    def step(self, velocity: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor,
             update: torch.Tensor) -> torch.Tensor:
        """Advance the frames marked in `update` (bool [frames]) in place; `timesteps` is the row's ([frames]).

        `velocity` may hold more frames than `latents` (an end image appended to the model input).
        """
        frames = torch.nonzero(update.cpu()).flatten()
        if frames.numel() == 0:
            return latents
        self._allocate(latents, velocity)
        self._start(frames, timesteps)
        plan = self._row_plan(frames)
        sel = _selector(frames, self.device)
        work = [_scratch(w, sel) for w in self.work]
        x = _take(latents, sel)
        m = self._x0(x, _take(velocity, sel), plan["sigma"], out=work[0])
        use_c = plan["use_c"]
        x_c = self._correct(m, sel, plan, work) if use_c.any() else None
        x_in = x if x_c is None else _blend(use_c, x_c, x)
        x_next = self._predict(x_in, m, _take(self.history[-1], sel), plan, work)
        # The reference keeps the step's output as last_sample where it ran no corrector (module docstring).
        _put(self.last, sel, x_next if x_c is None else _blend(use_c, x_c, x_next))
        for older, newer in zip(self.history, self.history[1:]):
            _put(older, sel, _take(newer, sel))
        _put(self.history[-1], sel, m)
        _put(latents, sel, x_next)
        self._advance(frames, plan["order_p"])
        return latents

    def frame_state(self, frame: int) -> dict:
        """One frame's solver state, named as in the diffusers scheduler (None where it holds none yet)."""
        filled = int(self.lower_order_nums[frame])
        outputs = [h[:, :, frame] if filled >= self.order - i else None for i, h in enumerate(self.history)]
        if not self.history:
            outputs = [None] * self.order
        index = int(self.step_index[frame])
        return {"step_index": None if index < 0 else index, "lower_order_nums": filled,
                "this_order": int(self.this_order[frame]), "model_outputs": outputs,
                "last_sample": self.last[:, :, frame] if bool(self.has_last[frame]) else None}

    def _start(self, frames: torch.Tensor, timesteps: torch.Tensor) -> None:
        """A frame's first step finds its step index from its timestep, as the scheduler does."""
        for f in frames[self.step_index[frames] < 0].tolist():
            self.step_index[f] = self.template.index_for_timestep(int(timesteps[f]))

    def _row_plan(self, frames: torch.Tensor) -> dict:
        """What each updated frame does this row (CPU decisions) and its coefficients (on the device)."""
        si = self.step_index[frames]
        use_c = self.has_last[frames] & torch.tensor([int(i) - 1 not in self.disabled for i in si])
        order_c = self.this_order[frames].clamp(min=1)
        order_p = torch.minimum(torch.clamp(len(self.timesteps) - si, max=self.order), self.lower_order_nums[frames] + 1)
        pred = self.predictor[si, order_p - 1]
        corr = self.corrector[si, order_c - 1]
        # One transfer per row: [columns, frames] then a broadcastable [1, 1, frames, 1, 1] per column.
        table = torch.cat([self.sigmas[si, None], pred, corr], dim=1).T.contiguous().to(self.device, non_blocking=True)
        cols = table.view(table.shape[0], 1, 1, -1, 1, 1).unbind(0)
        names = ["sigma"] + [f"p_{n}" for n in _P] + [f"c_{n}" for n in _C]
        plan = dict(zip(names, cols))
        plan.update(use_c=use_c, order_p=order_p, p_second=bool((order_p == 2).any()),
                    c_second=bool((order_c[use_c] == 2).any()))
        return plan

    def _allocate(self, latents: torch.Tensor, velocity: torch.Tensor) -> None:
        """State and scratch buffers like the latents, made once per window.

        x0 predictions keep the dtype `sample - sigma * v` has in the scheduler (fp32 for a bf16 model),
        samples the latents'. Scratch buffers let every row run in place: fresh whole-window temporaries
        would cost more than the arithmetic (page faults on the CPU, allocator traffic on a GPU).
        """
        if self.history:
            return
        dtype = torch.promote_types(latents.dtype, velocity.dtype)
        self.history = [torch.zeros_like(latents, dtype=dtype) for _ in range(self.order)]
        self.last = torch.zeros_like(latents)
        self.work = [torch.empty_like(latents, dtype=dtype) for _ in range(4)]

    @staticmethod
    def _x0(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """convert_model_output for flow prediction. The scheduler multiplies by a 0-dim sigma, which
        takes the velocity's dtype (bf16 for a bf16 transformer); casting sigma first keeps that rounding."""
        sigma = sigma.to(v.dtype)
        prod = torch.mul(v, sigma, out=out) if v.dtype == out.dtype else v * sigma
        return torch.sub(x, prod, out=out)

    def _correct(self, m: torch.Tensor, sel, plan: dict, work: list[torch.Tensor]) -> torch.Tensor:
        """UniC (multistep_uni_c_bh_update), the same operations in the same order, in work[3].

        Rows are computed for every selected frame; the caller keeps them only where the scheduler corrects.
        """
        last, m0 = _take(self.last, sel), _take(self.history[-1], sel)
        x_c = torch.mul(last, plan["c_ratio"], out=work[3])
        x_c.sub_(torch.mul(m0, plan["c_a_h"], out=work[1]))
        res = torch.sub(m, m0, out=work[1]).mul_(plan["c_rho_t"])
        if plan["c_second"]:
            d = torch.sub(_take(self.history[-2], sel), m0, out=work[2]).div_(plan["c_rk"]).mul_(plan["c_rho"])
            res = d.add_(res)
        x_c.sub_(res.mul_(plan["c_a_b"]))
        return x_c.to(last.dtype)  # the scheduler casts the corrected sample to last_sample's dtype

    @staticmethod
    def _predict(x: torch.Tensor, m: torch.Tensor, m1: torch.Tensor, plan: dict,
                 work: list[torch.Tensor]) -> torch.Tensor:
        """UniP (multistep_uni_p_bh_update) in work[2]: `m` is this step's x0 prediction, `m1` the one before."""
        x_next = torch.mul(x, plan["p_ratio"], out=work[2])
        x_next.sub_(torch.mul(m, plan["p_a_h"], out=work[1]))
        if plan["p_second"]:
            d = torch.sub(m1, m, out=work[1]).div_(plan["p_rk"]).mul_(plan["p_rho"]).mul_(plan["p_a_b"])
            x_next.sub_(d)
        return x_next

    def _advance(self, frames: torch.Tensor, order_p: torch.Tensor) -> None:
        self.this_order[frames] = order_p
        self.lower_order_nums[frames] = torch.clamp(self.lower_order_nums[frames] + 1, max=self.order)
        self.step_index[frames] += 1
        self.has_last[frames] = True


def _tables(scheduler: UniPCMultistepScheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor and corrector coefficients `[step index, order - 1, column]` for every step of the grid.

    Computed entry by entry on 0-dim float32 tensors with diffusers' expressions in diffusers' order, so each
    number is the one the per-frame scheduler computes (a vectorised log or expm1 may differ in the last bit).
    """
    sig = scheduler.sigmas.float()
    n = len(scheduler.timesteps)
    pred = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]]).repeat(n, 2, 1)
    corr = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]]).repeat(n, 2, 1)
    for i in range(n):
        pred[i, 0] = _predictor(sig, i, 1)
        if i >= 1:
            pred[i, 1] = _predictor(sig, i, 2)
            corr[i, 0] = _corrector(sig, i, 1)
        if i >= 2:
            corr[i, 1] = _corrector(sig, i, 2)
    return pred, corr


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    return torch.log(1 - sigma) - torch.log(sigma)  # flow sigmas: alpha = 1 - sigma


def _common(sig: torch.Tensor, t: int, s0: int):
    """h, hh, h_phi_1, B_h (bh2) and the three scalars every update uses, for a step from sigma[s0] to sigma[t]."""
    sigma_t, sigma_s0 = sig[t], sig[s0]
    alpha_t = 1 - sigma_t
    h = _lam(sigma_t) - _lam(sigma_s0)
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = h_phi_1  # bh2: B(h) = expm1(hh), the same number
    return h, hh, h_phi_1, b_h, (sigma_t / sigma_s0, alpha_t * h_phi_1, alpha_t * b_h)


def _predictor(sig: torch.Tensor, i: int, order: int) -> torch.Tensor:
    h, _, _, _, (ratio, a_h, a_b) = _common(sig, i + 1, i)
    if order == 1:
        return torch.stack([ratio, a_h, a_b, torch.tensor(1.0), torch.tensor(0.0)])
    rk = (_lam(sig[i - 1]) - _lam(sig[i])) / h
    return torch.stack([ratio, a_h, a_b, rk, torch.tensor(0.5)])  # diffusers fixes rho_p = 0.5 at order 2


def _corrector(sig: torch.Tensor, i: int, order: int) -> torch.Tensor:
    h, hh, h_phi_1, b_h, (ratio, a_h, a_b) = _common(sig, i, i - 1)
    if order == 1:
        return torch.stack([ratio, a_h, a_b, torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.5)])
    rk = (_lam(sig[i - 2]) - _lam(sig[i - 1])) / h
    h_phi_k = h_phi_1 / hh - 1
    b1 = h_phi_k * 1 / b_h
    h_phi_k = h_phi_k / hh - 1 / 2
    b2 = h_phi_k * 2 / b_h
    rks = torch.stack([rk, torch.ones(())])
    rhos = torch.linalg.solve(torch.stack([rks ** 0, rks ** 1]), torch.stack([b1, b2]))
    return torch.stack([ratio, a_h, a_b, rk, rhos[0], rhos[1]])


# Frame selection: a contiguous run of frames (what step matrices produce) is a slice, so reads are views
# and writes are in place; any other set goes through index_select / index_copy_.

def _selector(frames: torch.Tensor, device: torch.device):
    first, last = int(frames[0]), int(frames[-1])
    if last - first + 1 == frames.numel():
        return slice(first, last + 1)
    return frames.to(device, non_blocking=True)


def _take(t: torch.Tensor, sel) -> torch.Tensor:
    return t[:, :, sel] if isinstance(sel, slice) else t.index_select(2, sel)


def _scratch(t: torch.Tensor, sel) -> torch.Tensor:
    """Room for a result over the selected frames: a view of `t`, or a fresh tensor for an index set."""
    if isinstance(sel, slice):
        return t[:, :, sel]
    return t.new_empty((*t.shape[:2], sel.numel(), *t.shape[3:]))


def _put(t: torch.Tensor, sel, value: torch.Tensor) -> None:
    if isinstance(sel, slice):
        t[:, :, sel] = value
    else:
        t.index_copy_(2, sel, value.to(t.dtype))


def _blend(mask: torch.Tensor, yes: torch.Tensor, no: torch.Tensor) -> torch.Tensor:
    """`yes` on the frames where the CPU mask is set, `no` elsewhere (no device op when uniform)."""
    if bool(mask.all()):
        return yes
    if not mask.any():
        return no
    where = mask.to(yes.device, non_blocking=True).view(1, 1, -1, 1, 1)
    return torch.where(where, yes, no)
