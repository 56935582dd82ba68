"""The workspace's own Python code: the COVID-19-20 workflow around the pinned nnU-Net v1.

Every top-level module is one make target, run as ``python -m covidseg.<target>``:

    synthetic    a synthetic download in the challenge's layout (make synthetic, make demo)
    convert      the COVID-19-20 download -> an nnU-Net raw task, a held-out test set, the unlabelled pool
    preprocess   nnU-Net's planning and preprocessing, and the unlabelled pool's
    baseline     3d_fullres + 3d_lowres, their ensemble, the Dice table
    control      the MoE's same-budget control (nnUNetTrainerV2_finetune from the baseline)
    selftrain    nnU-Net self-training from the baseline
    meanteacher  a mean teacher from the baseline
    weights      baseline checkpoint -> mixture-of-experts initialisation
    semi         the semi-supervised mixture of experts
    evaluate     every trained model segments the held-out test set
    predict      segmentations of new CTs
    gradcam      Grad-CAM attention maps
    report       every model compared on the test set and the validation fold
    export       a trained model as one zip with a manifest, to share
    import       a model zip checked, loaded safely once and installed (``python -m covidseg.import``)
    experiment   the whole protocol per labelled fraction x seed

The libraries they share, each importing only the ones above it in this list:

    core        errors (the one error convention), challenge (the download's layout, the lesion label, the
                case-id rule), workspace (nnU-Net's folders, environment and subprocesses)
    data        conversion (download -> raw task), mosmed (MosMed-1110's registry), phantoms (synthetic CTs),
                ct_inputs (CTs handed to predict / gradcam), dicom_series (DICOM CT series found, checked and
                read), external_sets (external labelled test sets), image_checks (a NIfTI file read in full)
    evaluation  metrics (Dice, NSD, HD95, volume error in physical units), statistics (bootstrap CIs, paired
                tests), held_out (the test-set comparison), prediction_records (made_by.json)
    runs        the run machinery: methods (the registry of models and their folders), provenance (the
                settings check), nnunet_runs (training, resuming, prediction), distributed (torchrun),
                baseline_variants (the bodies of control, selftrain and meanteacher), model_files (a model's
                files loaded safely before use), model_zip (export and import of a model), slurm (the
                experiment's runs as SLURM jobs)

The nnU-Net-side code (network, trainers, losses, Grad-CAM) lives in ``semi_supervised/`` and is copied
into the pinned nnU-Net, where nnU-Net's own class lookup finds it (``nnunet.*``). What the benchmarks share is
``bench/benchmarking.py``.
"""
