"""Paper 002: Lung Cancer Segmentation, project slides (``002_19078de01604c683.txt``).

Data only. The slides are a project proposal: they print no results table and no metric values, so ``TABLES`` is
empty. What they do print (dataset facts and the planned systems) is recorded in ``PAPER``.
"""

PAPER = dict(
    id="paper002",
    title="Lung Cancer Segmentation",
    title_printed=True,
    short_title="Lung-RADS segmentation then classification (slides)",
    file="002_19078de01604c683.txt",
    authors="Salem AlAthari, Zehui Chen, Kat Desai, Manjit Singh (Deep Neural Networks Final Project, April 25, 2024)",
    data=(
        "Lung-RADS pickles (Nam, Panina, Pak 2024): '972 CT images labeled by radiologists using the Lung-RADS "
        "System', each with a mask (lines 19-25); lung_cancer_test.pkl 1.1 GB, lung_cancer_train.pkl 4.15 GB "
        "(lines 31-44); the train DataFrame shows columns label1, mask, hu_array, hu_array_old and '708 rows x 4 "
        "columns' (lines 50-63)."
    ),
    systems=[
        "Segmentation part: CT scan -> segmentation network -> segmentation output (lines 78-96)",
        "Classification part: segmented images -> classification network -> benign / malignant (lines 98-120)",
        "Planned: fine-tune a pretrained model (UNET-derived, e.g. MobileNetV2, per the literature review, lines 74-75 "
        "and 137)",
        "Planned: a CNN baseline developed from scratch (line 139)",
    ],
    no_table_note=(
        "The slides print no results table and no metric values (their schedule ends with 'Performance enhancement' "
        "and 'Presentation & Paper', lines 141-143). There is nothing to compare against; lungkit results filed under "
        "paper002 are listed without a reported counterpart."
    ),
    printed_numbers={
        "CT images": "972",
        "train rows": "708",
        "columns": "4",
        "lung_cancer_test.pkl size": "1.1 GB",
        "lung_cancer_train.pkl size": "4.15 GB",
    },
    notes=[
        "The DOI is printed as '10.17632/5rr22hgzw.1' (line 25); the dataset's DOI is 10.17632/5rr22hgzwr.1 "
        "(GUIDE section 3): one character is missing.",
        "972 = 708 train + 264 test, matching the dataset's given split.",
    ],
)

TABLES = {}

RECIPES = {}
