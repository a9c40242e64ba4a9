"""fit's event semantics a fastai or Keras user relies on: after_fit runs after CancelFit (and after an
error or Ctrl-C, so a schedule's rates come back), an epoch
cancelled in after_epoch is still recorded, a schedule gives the optimizer its rates back, and
EarlyStopping picks the direction of a figure the way Keras does; History lookups."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn, optim

from netfit import CancelFit, Callback, EarlyStopping, History, ImageClassifierData, fit, one_cycle

rng = np.random.default_rng(0)
X = rng.standard_normal((512, 20)).astype(np.float32)
Y = (X[:, :3].argmax(1)).astype(np.int64)


def md():
    return ImageClassifierData.from_arrays(".", (X, Y), (X[:128], Y[:128]), bs=32, device="cpu")


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3), nn.LogSoftmax(dim=1))


class StopAt(Callback):
    def __init__(self, epoch, event="after_epoch"):
        self.epoch, self.seen = epoch, []
        setattr(self, event, self._stop)

    def _stop(self, run):
        if run.epoch == self.epoch:
            raise CancelFit()

    def after_fit(self, run):
        self.seen.append("after_fit")


def test_after_fit_runs_after_cancel_fit_and_the_cancelled_epoch_is_recorded():
    stop = StopAt(1)
    h = fit(net(), md(), 4, callbacks=[stop], verbose=False)
    assert h["epoch"] == [0, 1] and stop.seen == ["after_fit"]
    stop = StopAt(1, "before_epoch")
    h = fit(net(), md(), 4, callbacks=[stop], verbose=False)
    assert h["epoch"] == [0] and stop.seen == ["after_fit"]


def test_early_stopping_restores_the_best_weights_when_another_callback_stops_the_fit():
    m = net()
    es = EarlyStopping(patience=10)
    h = fit(m, md(), 6, optim.SGD(m.parameters(), 1.5), callbacks=[es, StopAt(4)], verbose=False)
    best = int(np.argmin(h["val_loss"]))
    from netfit.fit import _validate
    now = _validate(m, md().val_dl, nn.NLLLoss(), [], torch.device("cpu"))["val_loss"]
    assert now == pytest.approx(h["val_loss"][best], rel=1e-5)


def test_a_schedule_gives_the_optimizer_its_rates_back():
    m = net()
    opt = optim.Adam(m.parameters(), lr=1e-2)
    h = fit(m, md(), 2, opt, schedule=one_cycle(), verbose=False)
    assert max(h.info["lrs"]) == pytest.approx(1e-2) and h.info["lrs"][-1] < 1e-4
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    h2 = fit(m, md(), 1, opt, schedule=one_cycle(), verbose=False)  # max_lr=None: the optimizer's rate again
    assert max(h2.info["lrs"]) == pytest.approx(1e-2)
    fit(m, md(), 1, opt, callbacks=[StopAt(0)], schedule=one_cycle(), verbose=False)
    assert opt.param_groups[0]["lr"] == 1e-2  # also after CancelFit


class Boom(Callback):
    def __init__(self, exc):
        self.exc = exc

    def after_batch(self, run):
        if run.step == 5:
            raise self.exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_a_fit_ended_by_an_error_or_ctrl_c_still_gives_the_rates_back(exc):
    m = net()
    opt = optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    with pytest.raises(type(exc)):
        fit(m, md(), 2, opt, callbacks=[Boom(exc)], schedule=one_cycle(1.0), verbose=False)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9


def test_a_nan_under_a_schedule_leaves_the_rates_as_they_were():
    from netfit import NonFiniteLossError
    m = net()
    opt = optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    with pytest.raises(NonFiniteLossError):
        fit(m, md(), 3, opt, schedule=one_cycle(1e6), verbose=False)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9


def test_an_after_fit_that_fails_after_an_error_warns_and_the_first_error_is_raised():
    class Fragile(Callback):
        def after_fit(self, run):
            raise ValueError("cannot tidy up")
    with pytest.warns(UserWarning, match="cannot tidy up"), pytest.raises(RuntimeError, match="boom"):
        fit(net(), md(), 1, callbacks=[Boom(RuntimeError("boom")), Fragile()], verbose=False)


@pytest.mark.parametrize("monitor, mode", [("val_loss", "min"), ("error_rate", "min"), ("mse", "min"),
                                           ("rmse", "min"), ("accuracy", "max"), ("auc", "max"), ("f1", "max")])
def test_early_stopping_picks_the_direction_like_keras(monitor, mode):
    assert EarlyStopping(monitor=monitor).tracker.mode == mode


def test_history_lookups():
    h = History()
    for e, v in enumerate([0.5, 0.3, 0.4]):
        h.append({"epoch": e, "val_loss": v})
    assert h[np.argmin(h["val_loss"])] == {"epoch": 1, "val_loss": 0.3}
    assert "val_loss" in h and "accuracy" not in h and h.keys() == ["epoch", "val_loss"]
    with pytest.raises(KeyError, match="no epoch figure 'val_los'; the records hold"):
        h["val_los"]


def test_torch_schedulers_are_stepped_per_epoch_through_torch_scheduler():
    from netfit import FitError, TorchScheduler
    m = net()
    opt = optim.SGD(m.parameters(), lr=0.1)
    step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with pytest.raises(FitError, match=r"PyTorch scheduler \(StepLR\).*TorchScheduler\(sched\)"):
        fit(m, md(), 3, opt, callbacks=[step], verbose=False)
    h = fit(m, md(), 3, opt, callbacks=[TorchScheduler(step)], verbose=False)
    assert h["lr"] == pytest.approx([0.1, 0.05, 0.025])  # the rate each epoch trained with
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
    fit(m, md(), 2, opt, callbacks=[TorchScheduler(plateau)], verbose=False)
    assert opt.param_groups[0]["lr"] <= 0.0125


def test_callback_states_are_matched_by_class_on_resume(tmp_path):
    from netfit import SaveBest
    ckpt = tmp_path / "ckpt"
    m = net()
    opt = optim.Adam(m.parameters())
    fit(m, md(), 2, opt, callbacks=[SaveBest(tmp_path / "best", mean=0, std=1), EarlyStopping(patience=5)],
        checkpoint=ckpt, schedule=one_cycle(1e-2), verbose=False)
    es = EarlyStopping(patience=5)  # listed first now, SaveBest left out: by position it would get SaveBest's state
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        h = fit(m, md(), 4, opt, callbacks=[es], checkpoint=ckpt, resume=True, schedule=one_cycle(1e-2),
                verbose=False)
    assert not [x for x in w if "starts afresh" in str(x.message)]
    assert len(h.info["lrs"]) == 4 * 16  # the schedule's 2 saved epochs of rates kept


def test_a_validation_figure_without_validation_data_is_named_before_training():
    from netfit import FitError, accuracy
    data = ImageClassifierData.from_arrays(".", (X, Y), None, bs=32, device="cpu")
    m = net()
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(FitError, match="monitors 'val_loss', a validation figure, but fit has no validation data"):
        fit(m, data, 2, callbacks=[EarlyStopping()], verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fit(m, data, 1, metrics=[accuracy], verbose=False)
    assert any("measured on the validation data, and fit has none" in str(x.message) for x in w)


def test_every_callback_sees_the_epoch_a_cancel_fit_ends():
    from netfit import CSVLogger
    import tempfile, os
    path = os.path.join(tempfile.mkdtemp(), "log.csv")
    m = net()
    es = EarlyStopping(patience=5)
    h = fit(m, md(), 4, optim.SGD(m.parameters(), 0.5), callbacks=[StopAt(2), CSVLogger(path), es], verbose=False)
    assert h["epoch"] == [0, 1, 2]
    assert len(open(path).read().strip().splitlines()) == 1 + 3  # header and every recorded epoch
    assert es.tracker.best == min(h["val_loss"])


def test_a_resumed_schedule_keeps_its_peaks_and_gives_back_the_users_rates(tmp_path):
    ckpt = tmp_path / "ckpt"
    m = net()
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    fit(m, md(), 4, opt, callbacks=[StopAt(1)], checkpoint=ckpt, schedule=one_cycle(), verbose=False)
    full = net()
    h_full = fit(full, md(), 4, optim.SGD(full.parameters(), lr=0.1, momentum=0.9), schedule=one_cycle(),
                 verbose=False)
    m2 = net()
    opt2 = optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)  # a fresh process's objects
    h = fit(m2, md(), 4, opt2, checkpoint=ckpt, resume=True, schedule=one_cycle(), verbose=False)
    assert h.info["lrs"] == pytest.approx(h_full.info["lrs"])
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["momentum"] == 0.9


def test_the_first_batch_check_leaves_a_tuple_output_to_a_custom_loss():
    from torch.utils.data import DataLoader, TensorDataset

    class TupleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(20, 3)

        def forward(self, x):
            o = self.l(x)
            return o, o.detach()
    dl = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(Y)), batch_size=32)
    fit(TupleNet(), (dl, None), 1, crit=lambda p, y: nn.functional.cross_entropy(p[0], y), verbose=False)


def test_figures_pickle():
    import pickle
    from netfit import plots
    fig = plots(np.random.rand(2, 28, 28))
    assert type(pickle.loads(pickle.dumps(fig))).__name__ == "NotebookFigure"


def test_cancel_epoch_reports_the_loss_of_the_batches_trained():
    from netfit import CancelEpoch

    class Half(Callback):
        def after_batch(self, run):
            if run.batch == 7:
                raise CancelEpoch()
    h = fit(net(), md(), 2, callbacks=[Half()], verbose=False)
    assert all(np.isfinite(h["trn_loss"]))


def test_learner_predict_without_validation_data_says_so():
    from netfit import DataError, Learner
    learn = Learner(net(), ImageClassifierData.from_arrays(".", (X, Y), None, bs=32, device="cpu"))
    with pytest.raises(DataError, match="no validation set to predict on; pass the inputs"):
        learn.predict()


class Figures(Callback):
    """Sets the epoch's figures, as a metric would have measured them."""

    def __init__(self, **series):
        self.series = series

    def after_epoch(self, run):
        for k, v in self.series.items():
            run.record[k] = v[run.epoch]


def test_save_best_after_early_stopping_saves_the_weights_of_the_epoch_it_names(tmp_path):
    from safetensors.torch import load_file
    from netfit import SaveBest
    m = net()
    seen = {}

    class Keep(Callback):  # the weights each epoch ended with, as later callbacks see them
        def after_epoch(self, run):
            seen[run.epoch] = [p.detach().clone() for p in run.model.parameters()]
    save = SaveBest(tmp_path / "best", monitor="acc_", mode="max")
    h = fit(m, md(), 4, callbacks=[Keep(), Figures(val_loss=[1.0, 2.0, 3.0, 4.0], acc_=[0.5, 0.6, 0.7, 0.8]),
                                   EarlyStopping("val_loss", patience=2), save], verbose=False)
    assert h.info["early_stopping"]["stopped_after"] == 2 and h.info["save_best"]["epoch"] == 2
    saved = load_file(tmp_path / "best" / "model.safetensors")
    assert all(torch.equal(saved[k], b) for k, b in zip(m.state_dict(), seen[2]))


@pytest.mark.parametrize("name, mode", [("val_mape", "min"), ("dice_loss", "min"), ("f1_loss", "min"),
                                        ("map", "max"), ("top_k_accuracy", "max"), ("val_acc", "max"),
                                        ("MulticlassAccuracy", "max"), ("MulticlassF1Score", "max"),
                                        ("mAP50-95", "max"), ("mIoU", "max"), ("top5acc", "max"),
                                        ("heatmap_mse", "min"), ("layer2_norm", "min"), ("auroc", "max"),
                                        ("psnr", "max")])
def test_auto_mode_reads_loss_and_error_names_as_lower_is_better(name, mode):
    assert EarlyStopping(monitor=name).tracker.mode == mode


def test_a_keras_style_monitor_name_is_refused_before_training_and_a_callbacks_figure_is_taken():
    from netfit import FitError, SaveBest, accuracy
    m = net()
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(FitError, match="use monitor='accuracy'"):
        fit(m, md(), 2, metrics=[accuracy], callbacks=[EarlyStopping("val_accuracy")], verbose=False)
    assert all(map(torch.equal, before, m.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a figure a callback adds, and fit's own lr and time, are monitored quietly
        h = fit(m, md(), 2, callbacks=[Figures(acc_=[0.5, 0.6]), EarlyStopping("acc_"), EarlyStopping("time")],
                verbose=False)
    assert h.info["early_stopping"]["monitor"] in ("acc_", "time")
    with pytest.warns(UserWarning, match="did you mean 'val_loss'"):
        fit(m, md(), 1, callbacks=[Figures(val_los=[0.5]), EarlyStopping("val_los")], verbose=False)


def test_validation_and_the_lr_column_follow_a_loss_or_optimizer_a_callback_swapped_in():
    from netfit.fit import _validate
    m = net()

    class Swap(Callback):
        def before_epoch(self, run):
            if run.epoch == 1:
                run.crit = nn.CrossEntropyLoss(label_smoothing=0.5)
                run.opt = optim.SGD(run.model.parameters(), lr=0.0)
    h = fit(m, md(), 2, optim.Adam(m.parameters(), lr=1e-2), callbacks=[Swap()], verbose=False)
    smoothed = _validate(m, md().val_dl, nn.CrossEntropyLoss(label_smoothing=0.5), [], torch.device("cpu"))
    assert h[-1]["val_loss"] == pytest.approx(smoothed["val_loss"]) and h[-1]["lr"] == 0.0


def test_a_nan_loss_error_carries_the_history_of_the_epochs_before_it():
    from netfit import NonFiniteLossError

    class Poison(Callback):
        def before_batch(self, run):
            if run.epoch == 1:
                run.xb = run.xb * float("nan")
    with pytest.raises(NonFiniteLossError) as e:
        fit(net(), md(), 3, callbacks=[Poison()], verbose=False)
    assert e.value.history["epoch"] == [0]


def test_extending_a_finished_run_with_an_after_fit_callback_continues_it_as_one_run(tmp_path):
    class Tidy(Callback):
        def after_fit(self, run):
            pass
    whole = net()
    h = fit(whole, md(), 4, callbacks=[EarlyStopping(patience=9), Tidy()], verbose=False, seed=0)
    part = net()
    fit(part, md(), 2, callbacks=[EarlyStopping(patience=9), Tidy()], checkpoint=tmp_path / "c", verbose=False, seed=0)
    h2 = fit(part, md(), 4, callbacks=[EarlyStopping(patience=9), Tidy()], checkpoint=tmp_path / "c", resume=True,
             verbose=False, seed=0)
    assert h2["trn_loss"] == pytest.approx(h["trn_loss"], rel=1e-6)


def test_a_resumed_fit_keeps_what_early_stopping_and_save_best_reported(tmp_path):
    from netfit import SaveBest
    m = net()
    cbs = lambda: [EarlyStopping(patience=5), SaveBest(tmp_path / "best")]  # noqa: E731
    h1 = fit(m, md(), 2, callbacks=cbs(), checkpoint=tmp_path / "c", verbose=False)
    h2 = fit(m, md(), 2, callbacks=cbs(), checkpoint=tmp_path / "c", resume=True, verbose=False)  # nothing left
    assert h2.info["early_stopping"] == h1.info["early_stopping"] and h2.info["save_best"] == h1.info["save_best"]
