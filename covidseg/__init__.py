"""The workspace's own Python code: the COVID-19-20 workflow around the pinned nnU-Net v1.

Every top-level module is one make target, run as ``python -m covidseg.<target>``:

    synthetic   a synthetic download in the challenge's layout   (make synthetic, make demo)
    convert     the COVID-19-20 download -> an nnU-Net raw task   (make convert)
    preprocess  nnU-Net's planning and preprocessing, and the unlabelled pool
    baseline    3d_fullres + 3d_lowres, their ensemble, the Dice table
    weights     baseline checkpoint -> mixture-of-experts initialisation
    semi        the semi-supervised mixture of experts
    predict     segmentations of new CTs
    gradcam     Grad-CAM attention maps
    report      every model compared on the validation cases

The libraries they share, by stage:

    core        errors (the one error convention), challenge (the download's layout, the lesion label,
                the case-id rule), workspace (nnU-Net's folders and commands), nnunet_runs (training runs)
    data        conversion (download -> raw task), phantoms (synthetic CTs), ct_inputs (CTs handed to
                predict / gradcam)
    evaluation  metrics (Dice, NSD, HD95, volume error in physical units)

The nnU-Net-side code (network, trainer, losses, Grad-CAM) lives in ``semi_supervised/`` and is copied
into the pinned nnU-Net, where nnU-Net's own class lookup finds it (``nnunet.*``).
"""
