"""The ``vlarl`` command: parses arguments and calls recipes; no training logic here."""

from __future__ import annotations

import argparse
import json
import re
import sys

from vlarl.errors import VlarlError

# --flag -> dotted config key, for `vlarl collect`
_COLLECT_FLAGS = {
    "env": "env.name",
    "policy": "policy",
    "episodes": "episodes",
    "out": "out",
    "workers": "workers",
    "noise": "noise",
    "obs_mode": "env.obs_mode",
    "image_size": "env.image_size",
    "cameras": "env.cameras",
    "episode_length": "env.episode_length",
    "seed": "seed",
    "source": "source",
}


def _recipe_args(parser: argparse.ArgumentParser, config_help: str, resume_help: str, example: str) -> None:
    """--config, --resume and the dotted overrides every training recipe takes."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--resume", metavar="RUN_DIR", help=resume_help)
    parser.add_argument("--resume-from-older", action="store_true",
                        help="with --resume: when the newest checkpoint is damaged, continue from the newest intact one "
                             "(the steps after it are lost; by default a damaged newest checkpoint is refused)")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlarl", description="RL post-training for vision-language-action policies")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on its embedded default (a short simulated run)")
    _recipe_args(demo, "YAML recipe (defaults are embedded)", "continue the run in RUN_DIR with its saved config",
                 "collect.episodes=4")

    col = sub.add_parser("collect", help="collect scripted episodes into a dataset")
    col.add_argument("--config", help="YAML recipe")
    for flag in _COLLECT_FLAGS:
        col.add_argument("--" + flag.replace("_", "-"), dest=flag)
    col.add_argument("overrides", nargs="*", help="dotted overrides, e.g. env.options.reward=sparse")

    ds = sub.add_parser("dataset", help="inspect, export and import datasets")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    info = ds_sub.add_parser("info", help="summary of a dataset")
    info.add_argument("path")
    info.add_argument("--verify", action="store_true", help="read every episode file and report damage")
    info.add_argument("--json", action="store_true", help="print JSON")
    exp = ds_sub.add_parser("export", help="write a vlarl dataset in another layout (LeRobotDataset v2.1)")
    exp.add_argument("--format", required=True, choices=["lerobot"])
    exp.add_argument("--video", action="store_true", help="cameras as H.264 videos (lossy) instead of PNG frames")
    exp.add_argument("--robot-type", default="vlarl")
    exp.add_argument("path", metavar="DIR")
    exp.add_argument("out", metavar="OUT")
    imp = ds_sub.add_parser("import", help="read a dataset in another layout (LeRobotDataset v2.x) into vlarl's")
    imp.add_argument("--format", required=True, choices=["lerobot"])
    imp.add_argument("--task", help="task name for episodes without vlarl metadata (default: the robot type)")
    imp.add_argument("--source", default="human", help="episode source for episodes without vlarl metadata")
    imp.add_argument("path", metavar="DIR")
    imp.add_argument("out", metavar="OUT")

    train = sub.add_parser("train", help="train a policy")
    train_sub = train.add_subparsers(dest="recipe", required=True)
    sft = train_sub.add_parser("sft", help="supervised fine-tuning on episode datasets")
    _recipe_args(sft, "YAML recipe", "continue the run in RUN_DIR", "steps=5000 policy.head=tokens")

    rl = train_sub.add_parser("rlpd", help="online RL with offline demos (RLPD) and its SAC baselines")
    _recipe_args(rl, "YAML recipe, e.g. configs/rlpd-metaworld.yaml", "continue the run in RUN_DIR",
                 "sac.utd=5 steps=20000")
    rl.add_argument("--env", help="env name (env.name)")
    rl.add_argument("--demos", help="dataset of demos (demos)")

    hil = train_sub.add_parser("hil-serl", help="HIL-SERL: async actors + SAC learner, human interventions")
    _recipe_args(hil, "YAML recipe, e.g. configs/hil-serl-pick-cube.yaml", "continue the run in RUN_DIR "
                 "(actors still running from before reconnect)", "runtime=inprocess human=none steps=5000")
    hil.add_argument("--env", help="env name (env.name)")

    con = train_sub.add_parser("conrft", help="ConRFT: consistency policy, Cal-QL offline, then online with a human")
    _recipe_args(con, "YAML recipe, e.g. configs/conrft-pick-cube.yaml", "continue the run in RUN_DIR",
                 "offline_steps=3000 conrft.beta_schedule.end=0.05")
    con.add_argument("--env", help="env name (shortcut for env.name=...)")
    ire = train_sub.add_parser("ire-vla", help="iRe-VLA: SFT, then PPO on the action head and supervised "
                               "learning on the trunk, iterated (or the whole-model PPO baseline)")
    _recipe_args(ire, "YAML recipe, e.g. configs/ire-vla-metaworld.yaml", "continue the run in RUN_DIR with the next "
                 "stage", "rl.steps=8192 mode=whole-model-ppo")
    grape = train_sub.add_parser("grape", help="GRAPE: sample trajectories, score them with stage costs, "
                                 "trajectory-wise preference optimisation (TPO), iterated")
    _recipe_args(grape, "YAML recipe, e.g. configs/grape-metaworld.yaml", "continue the run in RUN_DIR with the next "
                 "iteration", "iterations=3 objective=efficiency tpo.beta=0.1")

    rldg = train_sub.add_parser("rldg", help="RLDG: RL specialists per task, their successful episodes distilled "
                                "into a generalist VLA (compared with demos and a mix)")
    _recipe_args(rldg, "YAML recipe, e.g. configs/rldg-metaworld.yaml", "continue the run in RUN_DIR from its "
                 "unfinished stage", "generalists=rl:45,demos:300 specialist=hil-serl")
    asap = train_sub.add_parser("asap", help="ASAP: pretrain a tracking policy in sim, learn a delta action model "
                                "from real (twin) rollouts, fine-tune with it, compare with SysID and DeltaDynamics")
    _recipe_args(asap, "YAML recipe, e.g. configs/asap-arm.yaml", "continue the run in RUN_DIR from its unfinished "
                 "stage", "stage=delta twin.action_delay=0 finetune.steps=100000")
    rc = sub.add_parser("reward-classifier", help="binary image success classifiers (HIL-SERL's reward)")
    rc_sub = rc.add_subparsers(dest="rc_command", required=True)
    rct = rc_sub.add_parser("train", help="train from labelled episodes; reports held-out precision/recall")
    rct.add_argument("--data", action="append", help="dataset with images and is_success (repeatable)")
    rct.add_argument("--config", help="YAML config")
    rct.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=2000 run_dir=runs/clf")

    ev = sub.add_parser("eval", help="evaluate a trained run or checkpoint")
    ev.add_argument("path", metavar="RUN_OR_CHECKPOINT")
    ev.add_argument("--episodes", type=int)
    ev.add_argument("--envs", type=int, help="parallel env processes")
    ev.add_argument("--env", dest="env_names", action="append", help="evaluate on this env (repeatable)")
    ev.add_argument("--episode-length", type=int)
    ev.add_argument("--videos", type=int)
    ev.add_argument("--twin-seed", type=int, help="evaluate on a physics twin drawn from this seed")
    ev.add_argument("--twin-strength", type=float)
    ev.add_argument("--out")

    robot = sub.add_parser("robot", help="serve an env (a robot's driver or a sim) to remote actors")
    robot_sub = robot.add_subparsers(dest="robot_command", required=True)
    serve = robot_sub.add_parser("serve", help="serve ENV over the network (vlarl.runtime.bridge)")
    serve.add_argument("--env", required=True, help="a registered env name, e.g. panda/pick-cube")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every one)")
    serve.add_argument("--port", type=int, default=7000)
    serve.add_argument("--safety", action="store_true", help="wrap the env in the default SafetyBox")
    serve.add_argument("--secret-file", help="the secret clients must hold (made, mode 0600, if missing; "
                       "default ~/.vlarl/robot-PORT.secret); VLARL_ROBOT_SECRET overrides it")
    serve.add_argument("--new-secret", action="store_true", help="replace the secret file with a fresh random secret")
    serve.add_argument("--tls-cert", help="TLS certificate (PEM) for untrusted networks; needs --tls-key")
    serve.add_argument("--tls-key", help="TLS private key (PEM)")
    serve.add_argument("--idle-timeout", type=float, default=300.0,
                       help="seconds a client may hold the robot without a request (default 300)")
    serve.add_argument("options", nargs="*", help="env options as key=value, e.g. obs_mode=pixels")
    sub.add_parser("envs", help="list the registered envs and their instructions")
    rpr = sub.add_parser("reproduce", help="run a method's benchmark end to end (data, training, evaluation, figures)")
    rpr.add_argument("method", help="sft, rlpd, hil-serl, conrft, ire-vla, grape, rldg or asap")
    rpr.add_argument("--budget", type=float, help="minutes; stops between commands once spent (default 1.5x the plan)")
    rpr.add_argument("--dry-run", action="store_true", help="print the plan and its commands only")
    rep = sub.add_parser("report", help="gather benchmarks/results into one Markdown + HTML report")
    rep.add_argument("--results", default="benchmarks/results", help="folder of benchmark results (.md, .json, .png)")
    rep.add_argument("--out", default="report.md", help="Markdown file to write (the HTML goes beside it)")
    rep.add_argument("--no-html", action="store_true")
    return p


# recipe -> (module, config class, train function, result keys too long to print)
_TRAINERS = {
    "rlpd": ("vlarl.recipes.rlpd", "RLPDConfig", "train_rlpd", ("evals",)),
    "hil-serl": ("vlarl.recipes.hil_serl", "HILSERLConfig", "train_hil_serl", ("evals", "episodes", "events")),
    "conrft": ("vlarl.recipes.conrft", "ConRFTRecipeConfig", "train_conrft", ("evals", "episodes", "events")),
    "ire-vla": ("vlarl.recipes.ire_vla", "IReVLAConfig", "train_ire_vla", ("stages", "freeze_checks")),
    "grape": ("vlarl.recipes.grape", "GRAPEConfig", "train_grape", ("iterations",)),
    "rldg": ("vlarl.recipes.rldg", "RLDGConfig", "train_rldg", ("specialists", "data", "generalists")),
    "asap": ("vlarl.recipes.asap", "ASAPConfig", "train_asap", ("closed_loop_sim",)),
}


def _train(args: argparse.Namespace) -> int:
    """``vlarl train RECIPE``: a new run from --config and overrides, or --resume RUN_DIR."""
    import importlib

    from vlarl.runtime import Run, load_config

    module, cfg_name, fn_name, hidden = _TRAINERS[args.recipe]
    mod = importlib.import_module(module)
    cfg_cls, train = getattr(mod, cfg_name), getattr(mod, fn_name)
    flags = [f"{key}={getattr(args, flag)}" for flag, key in (("env", "env.name"), ("demos", "demos"))
             if getattr(args, flag, None)]
    if args.resume:
        results = train(resume=Run.resume(args.resume, cfg_cls, flags + args.overrides,
                                          allow_older=args.resume_from_older))
    else:
        results = train(load_config(cfg_cls, args.config, flags + args.overrides))
    from vlarl.runtime.distributed import shutdown

    shutdown()  # under torchrun
    if not results.get("follower"):
        print(json.dumps({k: v for k, v in results.items() if k not in hidden}, indent=2))
    return 0


# a dotted override (``sac.utd=5``, ``env.options.reward=sparse``), as opposed to a stray argument
_OVERRIDE = re.compile(r"[A-Za-z_][\w.-]*=")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; overrides may come anywhere, before or after flags (argparse alone
    takes one run of them: ``train rlpd sac.utd=5 --demos D steps=100`` refused ``steps=100``)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    slot = next((s for s in ("overrides", "options") if hasattr(args, s)), None)  # the command's key=value list
    stray = [a for a in extra if slot is None or not _OVERRIDE.match(a)]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if slot is not None:  # later runs of overrides follow the first, in command-line order
        setattr(args, slot, [*(getattr(args, slot) or []), *extra])
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if getattr(args, "resume_from_older", False) and not args.resume:
            raise VlarlError("--resume-from-older goes with --resume RUN_DIR")
        return _dispatch(args)
    except VlarlError as err:
        print(f"vlarl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlarl: interrupted; everything committed so far is saved", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from vlarl.runtime import load_config

    if args.command == "demo":
        from vlarl.recipes.demo import DemoConfig, format_summary, run_demo
        from vlarl.runtime import Run

        if args.resume:
            summary = run_demo(resume=Run.resume(args.resume, DemoConfig, args.overrides,
                                                 allow_older=args.resume_from_older))
        else:
            summary = run_demo(load_config(DemoConfig, args.config, args.overrides))
        print(format_summary(summary))
        return 0
    if args.command == "collect":
        from vlarl.recipes.collect import CollectConfig, collect

        flags = [f"{key}={getattr(args, flag)}" for flag, key in _COLLECT_FLAGS.items() if getattr(args, flag) is not None]
        cfg = load_config(CollectConfig, args.config, flags + args.overrides)
        print(json.dumps(collect(cfg), indent=2))
        return 0
    if args.command == "dataset":
        return _dataset_info(args)
    if args.command == "train" and args.recipe in _TRAINERS:
        return _train(args)
    if args.command == "reward-classifier":
        from vlarl.recipes.reward_classifier import RewardClassifierConfig, train_reward_classifier

        flags = [f"data={','.join(args.data)}"] if args.data else []
        results = train_reward_classifier(load_config(RewardClassifierConfig, args.config, flags + args.overrides))
        print(json.dumps(results, indent=2))
        return 0
    if args.command == "train":
        from vlarl.recipes.sft import SFTConfig, train_sft
        from vlarl.runtime import Run

        if args.resume:
            results = train_sft(resume=Run.resume(args.resume, SFTConfig, args.overrides,
                                                  allow_older=args.resume_from_older))
        else:
            results = train_sft(load_config(SFTConfig, args.config, args.overrides))
        print(json.dumps({k: v for k, v in results.items() if k != "per_task"}, indent=2))
        return 0
    if args.command == "eval":
        from vlarl.recipes.evaluate_run import EvalConfig, evaluate_run

        keys = ("episodes", "envs", "env_names", "episode_length", "videos", "twin_seed", "twin_strength", "out")
        eval_cfg = EvalConfig(**{k: getattr(args, k) for k in keys if getattr(args, k) is not None})
        summary = evaluate_run(args.path, eval_cfg)
        for env, r in summary["per_task"].items():
            lo, hi = r["ci95"]
            print(f"{env:36s} success {r['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f})  mean length {r['mean_length']:.1f}")
        print(f"mean success {summary['mean_success']:.3f}; results in {summary['out']}")
        return 0
    if args.command == "reproduce":
        from vlarl.reproduce import reproduce

        out = reproduce(args.method, budget_minutes=args.budget, dry_run=args.dry_run)
        print(json.dumps(out, indent=2))
        return 0
    if args.command == "report":
        from vlarl.report import write_report

        print(json.dumps(write_report(args.results, args.out, html_out=not args.no_html), indent=2))
        return 0
    if args.command == "robot":
        return _robot_serve(args)
    if args.command == "envs":
        from vlarl.envs import ENV_NAMES
        from vlarl.envs.instructions import METAWORLD_INSTRUCTIONS

        extra = {"toy/reach": "move the red dot to the green target", "panda/pick-cube": "pick up the cube",
                 "arm/track": "follow the reference motion (ASAP's tracking task)"}
        for name in ENV_NAMES:
            print(f"{name:40s} {extra.get(name) or METAWORLD_INSTRUCTIONS[name.split('/', 1)[1]]}")
        return 0
    raise AssertionError(args.command)


def _robot_serve(args: argparse.Namespace) -> int:
    import yaml

    from vlarl.envs import make
    from vlarl.envs.robot import SafetyBox
    from vlarl.runtime.bridge import RobotServer

    options = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep:
            raise VlarlError(f"robot serve: option {item!r} is not key=value")
        options[key] = yaml.safe_load(value)

    def make_env():
        env = make(args.env, **options)
        return SafetyBox(env) if args.safety else env

    import os

    from vlarl.runtime.secret import ROBOT_SECRET_ENV, default_robot_secret_file, robot_server_secret
    from vlarl.runtime.wire import TLSConfig

    secret_file = args.secret_file or default_robot_secret_file(args.port)
    secret = robot_server_secret(secret_file, rotate=args.new_secret)
    tls = TLSConfig(cert=args.tls_cert, key=args.tls_key) if (args.tls_cert or args.tls_key) else None
    server = RobotServer(make_env, args.host, args.port, secret=secret, tls=tls, idle_timeout_s=args.idle_timeout)
    where = f"${ROBOT_SECRET_ENV}" if os.environ.get(ROBOT_SECRET_ENV) else str(secret_file)
    print(f"robot: serving {args.env} on {server.address[0]}:{server.address[1]}" + (" over TLS" if tls else ""),
          flush=True)
    print(f"robot: clients need the secret in {where} (mode 0600): copy it to the learner's machine and pass "
          f"RemoteEnv(host, port, secret_file=PATH) or set VLARL_ROBOT_SECRET_FILE=PATH", flush=True)
    server.serve_forever()
    return 0


def _dataset_info(args: argparse.Namespace) -> int:
    from vlarl.data import EpisodeDataset

    if args.dataset_command in ("export", "import"):
        from vlarl.data.lerobot import export_lerobot, import_lerobot

        if args.dataset_command == "export":
            out = export_lerobot(args.path, args.out, video=args.video, robot_type=args.robot_type)
        else:
            out = import_lerobot(args.path, args.out, task=args.task, source=args.source)
        print(json.dumps(out))
        return 0

    data = EpisodeDataset(args.path)
    summary = data.summary()
    if args.verify:
        summary["damaged"] = data.verify()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        rate = summary["success_rate"]
        print(f"{summary['path']}: {summary['episodes']} episodes, {summary['frames']} steps, "
              f"success {rate if rate is None else f'{rate:.2f}'}, {summary['disk_bytes'] / 1e6:.1f} MB, "
              f"{summary['fps']} fps")
        print("features:")
        for key, feat in summary["features"].items():
            print(f"  {key:32s} {feat['dtype']:8s} {tuple(feat['shape'])}")
        print("tasks:")
        for task, t in summary["tasks"].items():
            sources = ", ".join(f"{k} {v}" for k, v in t["sources"].items())
            print(f"  {task:24s} {t['episodes']:5d} episodes  {t['frames']:7d} steps  success {t['success_rate']:.2f}  ({sources})")
        for problem in summary["problems"] + summary.get("damaged", []):
            print(f"  problem: {problem}")
    return 1 if args.verify and summary["damaged"] else 0
