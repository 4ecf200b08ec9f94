"""Unlearning: data poisoning (`poison` for images, `text_poison` for QA answers), the fine-tuning
methods and their loss (`methods`), and SalUn's weight-saliency mask (`salun`)."""
