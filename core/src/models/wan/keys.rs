//! The Wan transformer's two spellings of its weights: the original repository's (`blocks.0.self_attn.q`, which
//! ComfyUI, lightx2v and the widely used GGUF and fp8 files keep) and diffusers' (`blocks.0.attn1.to_q`, which
//! vgen's modules use). The renaming is diffusers' `convert_wan_transformer_to_diffusers` (0.42.1), plus the
//! first–last frame model's `img_emb.emb_pos`.

/// Ordered substring replacements, applied one after another to every key, as diffusers applies them. The three
/// `norm` entries swap `norm2` and `norm3`: the original calls the cross-attention's norm `norm3`.
const RENAMES: [(&str, &str); 27] = [
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("cross_attn", "attn2"),
    ("self_attn", "attn1"),
    (".o.", ".to_out.0."),
    (".q.", ".to_q."),
    (".k.", ".to_k."),
    (".v.", ".to_v."),
    (".k_img.", ".add_k_proj."),
    (".v_img.", ".add_v_proj."),
    (".norm_k_img.", ".norm_added_k."),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
];

/// Whether these keys are in the original spelling. The two spellings share some keys
/// (`blocks.0.norm2.weight` means different norms in each), so the decision is made once per checkpoint.
pub fn is_original(names: &[&str]) -> bool {
    names.iter().any(|n| n.contains("self_attn.") || n.contains("cross_attn.") || n.starts_with("head.head"))
}

/// An original key in diffusers' spelling.
pub fn to_diffusers(original: &str) -> String {
    RENAMES.iter().fold(original.to_string(), |key, (from, to)| key.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_keys_become_diffusers_keys() {
        for (original, diffusers) in [
            ("blocks.3.self_attn.q.weight", "blocks.3.attn1.to_q.weight"),
            ("blocks.3.self_attn.o.bias", "blocks.3.attn1.to_out.0.bias"),
            ("blocks.3.self_attn.norm_q.weight", "blocks.3.attn1.norm_q.weight"),
            ("blocks.3.cross_attn.k_img.weight", "blocks.3.attn2.add_k_proj.weight"),
            ("blocks.3.cross_attn.norm_k_img.weight", "blocks.3.attn2.norm_added_k.weight"),
            ("blocks.3.norm3.weight", "blocks.3.norm2.weight"),
            ("blocks.3.ffn.0.weight", "blocks.3.ffn.net.0.proj.weight"),
            ("blocks.3.ffn.2.bias", "blocks.3.ffn.net.2.bias"),
            ("blocks.3.modulation", "blocks.3.scale_shift_table"),
            ("head.modulation", "scale_shift_table"),
            ("head.head.weight", "proj_out.weight"),
            ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
            ("text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias"),
            ("img_emb.proj.4.weight", "condition_embedder.image_embedder.norm2.weight"),
            ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ] {
            assert_eq!(to_diffusers(original), diffusers, "{original}");
        }
        assert!(is_original(&["head.head.weight"]));
        assert!(!is_original(&["blocks.0.attn1.to_q.weight", "blocks.0.norm2.weight"]));
    }
}
