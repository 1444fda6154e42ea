# The SQuAD recipes of issue 29's fourth sweep (studies/equal_time_wave4.sh), sourced by that sweep and by the
# fifth (studies/equal_time_wave5.sh, which adds its own): NAME|args lines as studies/equal_time.sh takes them.
export ST_RECIPES="st64|--batch 64 --mini-batch 64 --lr 1e-4
st256|--batch 256 --mini-batch 64 --lr 2e-4
st64p|--batch 64 --mini-batch 0 --lr 1e-4
st128p|--batch 128 --mini-batch 0 --lr 1.5e-4
st64ps30|--batch 64 --mini-batch 0 --lr 1e-4 --scale 30
st64ps50|--batch 64 --mini-batch 0 --lr 1e-4 --scale 50"
export ANCE_RECIPES="a64|
a64r95|negatives.denoise_ratio=0.95
a64p|train.chunk_size=null
a128p|train.batch_size=128 train.chunk_size=null train.lr=1.5e-4
a256p|train.batch_size=256 train.chunk_size=null train.lr=2e-4
a128pb|train.batch_size=128 train.chunk_size=null train.lr=1.5e-4 train.loss=bidirectional
a64pt3|train.chunk_size=null model.temperature=0.033
a64pt2|train.chunk_size=null model.temperature=0.02
a64pw50|train.chunk_size=null negatives.rank_window=[0,50] negatives.keep=50
a64pe50|train.chunk_size=null train.checkpoint_every=50
a64pn3|train.chunk_size=null negatives.n_per_query=3
a64pws|train.chunk_size=null negatives.warmup=static negatives.static_file=@STATIC@
a64pe50ws|train.chunk_size=null train.checkpoint_every=50 negatives.warmup=static negatives.static_file=@STATIC@
a64pn3t3|train.chunk_size=null negatives.n_per_query=3 model.temperature=0.033
a64pn3ws|train.chunk_size=null negatives.n_per_query=3 negatives.warmup=static negatives.static_file=@STATIC@
a64pn3e50ws|train.chunk_size=null negatives.n_per_query=3 train.checkpoint_every=50 negatives.warmup=static negatives.static_file=@STATIC@"
