"""`facestudio prepare` and `facestudio train`: make the identity (and style) guidance weights.

`prepare` turns a folder of photos into a face cache (and a report of the photos it cannot use); `train`
trains the guidance module on it by masked-face reconstruction, with accelerate (so `accelerate launch -m
facestudio.cli train ...` runs it on several GPUs). See docs/training.md.
"""

from __future__ import annotations

import argparse

from ..errors import FaceStudioError
from ..request import DEFAULT_STEPS
from . import EXIT_OK, quiet_libraries, require_extra


def add_commands(commands) -> None:
    """Register this module's commands on the `facestudio` subparsers."""
    prepare = commands.add_parser(
        "prepare", help="cache the faces of a folder of photos for training",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find, align and encode the face of every photo under DATA_DIR (any nesting; .jpg, .png,\n"
                    ".webp), with a square crop, masks and the caption from NAME.txt beside NAME.jpg, into\n"
                    "the cache OUT. Photos without a usable face are listed with the reason in\n"
                    "OUT/report.txt. Running it again resumes: unchanged photos are not redone.\n"
                    "Only use photos of people who agreed to it.",
        epilog="example: facestudio prepare ./people ./people-cache --resolution 512")
    prepare.add_argument("data_dir", metavar="DATA_DIR", help="folder of photos")
    prepare.add_argument("out", metavar="OUT", help="cache folder (created, or resumed)")
    prepare.add_argument("--resolution", type=int, default=512, help="side of the training crops (default 512)")
    prepare.add_argument("--min-face-size", type=int, default=None, metavar="PX",
                         help="smallest usable face, in photo pixels (default 48)")
    prepare.add_argument("--max-faces", type=int, default=None, metavar="N",
                         help="photos with more faces are rejected as crowds (default 4)")
    prepare.set_defaults(run=run_prepare)

    train = commands.add_parser(
        "train", help="train the identity guidance on a prepared face cache",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the identity (and style) guidance by reconstructing each photo from its masked\n"
                    "face: the base model stays frozen. Writes OUTPUT/identity and OUTPUT/style (load them\n"
                    "with FaceStudioPipeline.from_pretrained(BASE, guidance=OUTPUT)), checkpoints, loss.png\n"
                    "and sample grids. With several GPUs: accelerate launch -m facestudio.cli train ...",
        epilog="example: facestudio train ./people-cache --output ./my-guidance --base-model ./sd15 \\\n"
               "           --image-encoder ./clip-vit-h --max-steps 20000 --batch-size 8")
    train.add_argument("cache", metavar="CACHE", help="face cache made by `facestudio prepare`")
    train.add_argument("--output", required=True, metavar="DIR", help="where the run writes everything")
    train.add_argument("--base-model", default="tiny", help="'tiny', a diffusers folder or a hub id (default tiny)")
    train.add_argument("--image-encoder", metavar="MODEL",
                       help="CLIP vision model for the style condition ('tiny', a folder or a hub id), or 'none' "
                            "to train identity only (default: tiny with the tiny base, else required)")
    group = train.add_argument_group("optimisation")
    group.add_argument("--max-steps", type=int, default=1000)
    group.add_argument("--batch-size", type=int, default=1, help="per device")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1)
    group.add_argument("--learning-rate", type=float, default=1e-4)
    group.add_argument("--lr-scheduler", default="constant",
                       help="constant, constant_with_warmup, linear, cosine, ... (diffusers' get_scheduler)")
    group.add_argument("--lr-warmup-steps", type=int, default=0)
    group.add_argument("--adam-weight-decay", type=float, default=1e-2)
    group.add_argument("--max-grad-norm", type=float, default=1.0, help="0 turns clipping off")
    group.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                       help="auto: bf16/fp16 on a GPU, none on the CPU")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is there")
    group.add_argument("--num-workers", type=int, default=0, help="data loader processes")
    group = train.add_argument_group("conditions")
    for name in ("text", "identity", "style", "all"):
        group.add_argument(f"--drop-{name}", type=float, default=0.05, metavar="P",
                           help=f"how often {'all conditions are' if name == 'all' else f'the {name} is'} "
                                "dropped, for classifier-free guidance (default 0.05)")
    group.add_argument("--multi-identity", type=float, default=0.25, metavar="P",
                       help="share of side-by-side multi-person examples (default 0.25)")
    group.add_argument("--max-identities", type=int, default=2, help="most people in one composite (default 2)")
    group.add_argument("--identity-loss-weight", type=float, default=0.0, metavar="W",
                       help="identity loss on the predicted image's face (dlib recogniser); 0 turns it off")
    group.add_argument("--identity-loss-max-timestep", type=int, default=500, metavar="T",
                       help="apply the identity loss at timesteps up to T (default 500)")
    group.add_argument("--default-caption", default="", metavar="TEXT", help="caption of photos without one")
    group = train.add_argument_group("checkpoints and reports")
    group.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="0: only at the end")
    group.add_argument("--checkpoints-total-limit", type=int, metavar="N", help="keep only the newest N")
    group.add_argument("--resume", metavar="latest|CHECKPOINT", help="continue from a checkpoint")
    group.add_argument("--sample-every", type=int, default=500, metavar="N",
                       help="loss curve and sample grid every N steps (0: at the end only; -1: never)")
    group.add_argument("--sample-steps", type=int, default=DEFAULT_STEPS,
                       help="denoising steps of the sample images")
    group.add_argument("--num-samples", type=int, default=4, help="rows of the sample grid")
    train.set_defaults(run=run_train)


def run_prepare(args) -> int:
    from ..training.prepare import MAX_FACES, MIN_FACE_SIZE, PrepareSettings, prepare_dataset

    settings = PrepareSettings(resolution=args.resolution,
                               min_face_size=MIN_FACE_SIZE if args.min_face_size is None else args.min_face_size,
                               max_faces=MAX_FACES if args.max_faces is None else args.max_faces)
    report = prepare_dataset(args.data_dir, args.out, settings)
    total = len(report.accepted) + len(report.rejected)
    again = f" ({report.skipped} already done)" if report.skipped else ""
    print(f"{total} photos{again}: {len(report.accepted)} usable, {len(report.rejected)} rejected")
    for item in report.rejected:
        print(f"  rejected {item['source']}: {item['reason']}")
    print(f"cache: {args.out} (report in {args.out}/report.txt)")
    if not report.accepted:
        raise FaceStudioError(f"{args.data_dir}: no photo has a usable face; see {args.out}/report.txt")
    return EXIT_OK


def run_train(args) -> int:
    require_extra("train", "train", ("matplotlib",))  # the loss curve
    from ..training.trainer import TrainSettings, train

    encoder = args.image_encoder
    if encoder is None:
        if args.base_model != "tiny":
            raise FaceStudioError("--image-encoder is needed with a real base model: a CLIP vision model folder or "
                                  "hub id for the style condition, or 'none' to train identity only")
        encoder = "tiny"
    quiet_libraries(args.debug)
    settings = TrainSettings(
        cache=args.cache, output=args.output, base_model=args.base_model,
        image_encoder=None if encoder == "none" else encoder, max_steps=args.max_steps,
        batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate, adam_weight_decay=args.adam_weight_decay,
        max_grad_norm=args.max_grad_norm, lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
        mixed_precision=args.mixed_precision, seed=args.seed, checkpoint_every=args.checkpoint_every,
        checkpoints_total_limit=args.checkpoints_total_limit, sample_every=args.sample_every,
        sample_steps=args.sample_steps, num_samples=args.num_samples, drop_text=args.drop_text,
        drop_identity=args.drop_identity, drop_style=args.drop_style, drop_all=args.drop_all,
        multi_identity=args.multi_identity, max_identities=args.max_identities,
        identity_loss_weight=args.identity_loss_weight, identity_loss_max_timestep=args.identity_loss_max_timestep,
        default_caption=args.default_caption, resume=args.resume, cpu=args.cpu, num_workers=args.num_workers)
    result = train(settings)
    done = len(result.losses) - result.start_step
    if done <= 0:
        print(f"nothing to do: the checkpoint is already at step {result.start_step} of {args.max_steps}")
        return EXIT_OK
    count = min(10, len(result.losses))
    first, last = result.first_last_means(count)
    print(f"trained steps {result.start_step + 1}-{len(result.losses)} in {result.seconds:.1f} s "
          f"({result.seconds / done:.2f} s/step)")
    print(f"loss: mean of the first {count} steps {first:.4f}, of the last {count} steps {last:.4f}")
    print(f"guidance written to {args.output} (FaceStudioPipeline.from_pretrained(BASE, guidance={args.output!r}))")
    return EXIT_OK
