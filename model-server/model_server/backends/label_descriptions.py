"""Prototype phrasings of the four seed labels, for the embedding backend.

A bare label ("mobile") embeds poorly: the sentence model needs to hear how customers talk about
it. Each label gets several short descriptions in a customer's words; a text's similarity to a
label is its best match among them. They were written from the label's meaning, not copied from
the evaluation set in bench/data.
"""

LABEL_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "mobile": (
        "The mobile app on my phone crashes or freezes.",
        "Problem with the iPhone or Android app.",
        "The app from the App Store or Google Play will not install or update.",
        "Push notifications from the app do not arrive on my phone.",
        "The app on my tablet shows a blank screen after the latest update.",
        "The phone app drains the battery and keeps closing.",
    ),
    "website": (
        "The website does not load in my browser.",
        "A page on the web site shows an error or is broken.",
        "The checkout page on the website will not submit.",
        "The site is very slow in Chrome, Firefox or Safari on my computer.",
        "Links and buttons on the web page do not work.",
        "The desktop site layout looks wrong and images are missing.",
    ),
    "billing": (
        "I was charged twice and want a refund.",
        "Question about my invoice or a charge on my credit card.",
        "I want to cancel my subscription and stop the payments.",
        "My payment was declined or the price I paid is wrong.",
        "Please send me a receipt for my last payment.",
        "Change my billing plan or update my payment method.",
    ),
    "account access": (
        "I cannot log in to my account.",
        "I forgot my password and the reset email never arrives.",
        "My account is locked after too many sign-in attempts.",
        "The two-factor authentication code is not working.",
        "I lost access to the email address on my account and cannot verify it.",
        "My username and password are rejected at sign in.",
    ),
}

UNKNOWN_LABEL_TEMPLATE = "This message is about {}."
